"""Fixtures shared by the coordinator's round-loop tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.orm import Session, sessionmaker

from coordinator.store import make_session_factory, migrated_engine, repo


@pytest.fixture
def store(tmp_path: Path) -> Iterator[tuple[sessionmaker[Session], str]]:
    """A migrated SQLite store under tmp_path holding one run: (sessions, run id)."""
    with migrated_engine(f"sqlite:///{tmp_path / 'fedmerge.db'}") as engine:
        sessions = make_session_factory(engine)
        with sessions.begin() as s:
            run_id = repo.create_run(s, name="t", config={}, mode="global", optimizer="sgd",
                                     combiner="mean", num_rounds_planned=3,
                                     out_dir=str(tmp_path))
        yield sessions, run_id
