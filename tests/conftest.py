"""Shared fixtures. ``db_url``: one fresh, empty database per test, on each backend."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

PG_ENV = "FEDMERGE_TEST_PG_URL"


def _postgres_url() -> str:
    url = os.environ.get(PG_ENV)
    if url:
        return url
    message = (
        f'{PG_ENV} is unset: start PostgreSQL with `eval "$(bash .ci/postgres.sh)"` '
        "to run the PostgreSQL half of the store tests"
    )
    if os.environ.get("CI"):
        pytest.fail(f"CI must run the PostgreSQL tests but {message}", pytrace=False)
    pytest.skip(message)


@pytest.fixture(
    params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)],
)
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'fedmerge.db'}"
        return
    base = make_url(_postgres_url())
    name = f"fedmerge_t_{uuid.uuid4().hex[:16]}"
    # CREATE/DROP DATABASE can't run in a transaction: an autocommit admin connection.
    admin = create_engine(base.set(database="postgres"), isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        yield base.set(database=name).render_as_string(hide_password=False)
        with admin.connect() as conn:
            # FORCE: a test that leaked a connection must not leak the database too.
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        admin.dispose()
