"""The dashboard's read-only view of the run store.

SQLite files are opened through a ``mode=ro`` URI with ``query_only`` on, so even a bug
here cannot write. The coordinator keeps writing the same file in WAL mode, where readers
never block it; the dashboard does not set the journal mode itself (that is a write), it
reads whatever the coordinator set. Each session reads one snapshot: BEGIN is emitted
explicitly, as the store does, so a page's queries agree with each other.
PostgreSQL sessions default to read-only, repeatable-read (one snapshot) transactions.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import quote

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url

from coordinator.store import StoreUnavailable, make_engine, mask_url, ping
from coordinator.store.db import sqlite_begin, sqlite_pragma

BUSY_TIMEOUT_MS = 5_000


def _is_sqlite_file(url: str) -> bool:
    parsed = make_url(url)
    return parsed.get_backend_name() == "sqlite" and (parsed.database or "") not in (
        "", ":memory:"
    )


def readonly_url(url: str) -> str:
    """``sqlite:///path.db`` -> ``sqlite:///file:/abs/path.db?mode=ro&uri=true``; others as is."""
    if not _is_sqlite_file(url):
        return url
    parsed = make_url(url)
    database = parsed.database or ""
    if database.startswith("file:"):
        return url  # already a URI: the caller chose its mode
    path = Path(database).expanduser().resolve()
    uri = parsed.set(
        database=f"file:{quote(str(path))}",
        query={**parsed.query, "mode": "ro", "uri": "true"},
    )
    return uri.render_as_string(hide_password=False)


def _sqlite_reader_on_connect(dbapi_conn: Any, _record: Any) -> None:
    dbapi_conn.isolation_level = None  # SQLAlchemy's begin event (sqlite_begin) emits BEGIN
    sqlite_pragma(dbapi_conn, f"busy_timeout={BUSY_TIMEOUT_MS}")
    sqlite_pragma(dbapi_conn, "query_only=ON")


def _postgres_read_only(dbapi_conn: Any, _record: Any) -> None:
    cursor = dbapi_conn.cursor()
    try:
        cursor.execute(
            "SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY, ISOLATION LEVEL REPEATABLE READ"
        )
    finally:
        cursor.close()
    dbapi_conn.commit()


def _sqlite_reader(url: str) -> Engine:
    # SQLite has no server-side connection limit: no pool queue (QueuePool's 5 + 10 made
    # requests beyond 15 in flight wait, then fail with 503 under 50 watching clients).
    engine = create_engine(readonly_url(url), pool_pre_ping=True, max_overflow=-1)
    event.listen(engine, "connect", _sqlite_reader_on_connect)
    event.listen(engine, "begin", sqlite_begin)
    return engine


def make_readonly_engine(url: str, *, check: bool = True) -> Engine:
    """An engine that can only read ``url``; with ``check``, StoreUnavailable unless it answers."""
    if _is_sqlite_file(url):
        engine = _sqlite_reader(url)
    else:
        engine = make_engine(url)  # in-memory SQLite (tests) or a server
        if engine.url.get_backend_name() == "postgresql":
            event.listen(engine, "connect", _postgres_read_only)
    if check:
        try:
            ping(engine)
        except StoreUnavailable as exc:
            engine.dispose()
            raise StoreUnavailable(url, _why(url, exc.reason)) from exc
    return engine


def unavailable_reason(url: str, exc: BaseException) -> str:
    """Why ``url`` cannot be read, in words for a person (password masked)."""
    reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
    return f"the run store {mask_url(url)} cannot be read: {_why(url, reason)}"


def _why(url: str, reason: str) -> str:
    parsed = make_url(url)
    database = parsed.database or ""
    if _is_sqlite_file(url) and not database.startswith("file:"):
        path = Path(database).expanduser().resolve()
        if not path.exists():
            return f"{path} does not exist (has a coordinator run written to it yet?)"
    return reason
