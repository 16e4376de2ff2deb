"""The dashboard's engine reads, never writes, and never blocks the coordinator's writes."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from coordinator.store import (
    StoreUnavailable,
    make_engine,
    make_session_factory,
    repo,
    upgrade_to_head,
)
from dashboard import queries
from dashboard.app import create_app
from dashboard.db import make_readonly_engine, readonly_url
from dashboard.settings import DashboardSettings
from tests.dashboard import factories
from tests.dashboard.conftest import BASE_URL


def test_readonly_url() -> None:
    assert readonly_url("sqlite:////a/b.db") == "sqlite:///file%3A/a/b.db?mode=ro&uri=true"
    assert readonly_url("sqlite://") == "sqlite://"
    pg = "postgresql+psycopg://u@h:5432/db"
    assert readonly_url(pg) == pg


def test_writes_are_refused(db_url: str) -> None:
    """On both backends (``db_url`` comes from tests/conftest.py: SQLite and PostgreSQL)."""
    writer = make_engine(db_url)
    upgrade_to_head(writer)
    engine = make_readonly_engine(db_url)
    try:
        with engine.connect() as conn, pytest.raises(DBAPIError, match="read-?only"):
            conn.execute(text("DELETE FROM runs"))
    finally:
        engine.dispose()
        writer.dispose()


def test_the_app_reads_both_backends(db_url: str, tmp_path: Path) -> None:
    writer = make_engine(db_url)
    upgrade_to_head(writer)
    with make_session_factory(writer).begin() as s:
        run_id = factories.create_run(s)
        factories.commit_round(s, run_id, factories.round_record(1, reject="too large"))
        ckpt = factories.write_checkpoint(tmp_path, 2)
        factories.commit_round(s, run_id, factories.round_record(2, checkpoint=ckpt))
    writer.dispose()
    with TestClient(create_app(DashboardSettings(db_url=db_url)), base_url=BASE_URL) as client:
        run = client.get(f"/api/runs/{run_id[:6]}").json()
        assert (run["rounds_done"], run["num_clients"]) == (2, 3)
        assert run["best_central_accuracy"] == pytest.approx(0.7)
        clients = client.get(f"/api/runs/{run_id}/clients").json()["data"]
        assert [c["rejected"] for c in clients] == [0, 0, 1]
        assert client.get(f"/api/runs/{run_id}/evaluations").json()["count"] == 5
        assert client.get(f"/runs/{run_id}").status_code == 200
        assert client.get(f"/runs/{run_id}/checkpoints/2.safetensors").status_code == 200


def test_an_open_read_does_not_block_the_writer(db_url: str) -> None:
    writer_engine = make_engine(db_url)
    upgrade_to_head(writer_engine)
    writer = make_session_factory(writer_engine)
    with writer.begin() as s:
        run_id = factories.create_run(s)
    engine = make_readonly_engine(db_url)
    try:
        with make_session_factory(engine)() as reader:
            assert queries.list_runs(reader).count == 1  # a read transaction is open
            with writer.begin() as s:  # would wait (busy timeout) if the reader blocked it
                factories.commit_round(s, run_id, factories.round_record(1))
                repo.finish_run(s, run_id, "completed")
            # One snapshot per session, so a page's several queries agree with each other:
            assert queries.run_detail(reader, run_id).rounds_done == 0
            reader.rollback()
            assert queries.run_detail(reader, run_id).rounds_done == 1
    finally:
        engine.dispose()
        writer_engine.dispose()


def test_a_missing_sqlite_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(StoreUnavailable, match="does not exist"):
        make_readonly_engine(f"sqlite:///{tmp_path}/nothing-here.db")
