"""Engines, sessions and schema upgrades for the run store. Nothing runs at import.

One code path for SQLite (the default, a file under the run's out dir) and
PostgreSQL (by URL). SQLite is tuned so the coordinator can write while the
dashboard reads from another process: WAL journal, foreign keys on, and a 30 s
busy timeout instead of failing at once with "database is locked". SQLAlchemy,
not pysqlite, emits BEGIN, so DDL is transactional too: a migration that fails
halfway rolls back instead of leaving a half-copied table.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.util import CommandError
from sqlalchemy import Connection, Engine, create_engine, event, inspect
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import StaticPool

from coordinator.store.paths import private_dir, private_file

ENV_DB_URL = "FEDMERGE_DB_URL"
ENV_CONNECT_TIMEOUT = "FEDMERGE_DB_CONNECT_TIMEOUT"
DEFAULT_CONNECT_TIMEOUT_S = 5.0
DEFAULT_DB_NAME = "fedmerge.db"
SERVER_MAX_OVERFLOW = 35  # pool_size 5 + 35 = 40 connections to a database server at most
SQLITE_BUSY_TIMEOUT_MS = 30_000
MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"


class StoreError(RuntimeError):
    """Base of the store's named errors."""


class StoreUnavailable(StoreError):
    """The database cannot be reached; says which (password masked) and the driver's words."""

    def __init__(self, url: str, reason: str) -> None:
        self.url = mask_url(url)
        self.reason = reason
        super().__init__(f"run store {self.url} is unavailable: {reason}")


class NoStore(StoreError):
    """There is no run store where one was looked for (nothing has run there yet)."""


class UnmanagedDatabase(StoreError):
    """The database has tables but no alembic_version: not ours to migrate, so never touched."""

    def __init__(self, url: str, tables: list[str]) -> None:
        self.url = mask_url(url)
        super().__init__(
            f"database {self.url} has tables ({', '.join(sorted(tables))}) but no "
            "alembic_version table: it was not created by fedmerge. Refusing to migrate "
            "it; point the store at an empty or fedmerge-managed database."
        )


def mask_url(url: str) -> str:
    """The URL with any password replaced by ***, for messages and logs."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # a malformed URL is reported as given, minus nothing to hide
        return url


def resolve_db_url(url: str | None, out_dir: Path) -> str:
    """Explicit url > $FEDMERGE_DB_URL > sqlite:///<out_dir>/fedmerge.db."""
    if url:
        return url
    if env := os.environ.get(ENV_DB_URL):
        return env
    return f"sqlite:///{Path(out_dir).expanduser().resolve() / DEFAULT_DB_NAME}"


def _finite_json(value: Any) -> Any:
    # PostgreSQL's json rejects NaN/Infinity, which a diverging run can report;
    # store them as null on every backend so both read back the same.
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite_json(v) for v in value]
    return value


def _json_dumps(value: Any) -> str:
    return json.dumps(_finite_json(value), allow_nan=False)


def _sqlite_on_connect(dbapi_conn: Any, _record: Any) -> None:
    # pysqlite's own transaction handling skips BEGIN before DDL (so DDL autocommits):
    # switch it off and let sqlite_begin emit BEGIN (SQLAlchemy's documented recipe).
    dbapi_conn.isolation_level = None
    sqlite_pragma(dbapi_conn, "journal_mode=WAL")  # readers never block the writer
    sqlite_pragma(dbapi_conn, "foreign_keys=ON")  # SQLite's default is off
    sqlite_pragma(dbapi_conn, f"busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")


def sqlite_begin(conn: Connection) -> None:
    """The "begin" event handler that goes with ``isolation_level = None``: a deferred
    BEGIN, so a transaction reads one snapshot from its first SELECT on."""
    conn.exec_driver_sql("BEGIN")


def sqlite_pragma(dbapi_conn: Any, pragma: str) -> None:
    cursor = dbapi_conn.cursor()
    try:
        cursor.execute(f"PRAGMA {pragma}")
    finally:
        cursor.close()


def connect_timeout_s(value: float | str | None = None) -> float:
    """Seconds to wait for a database server to answer a connection: ``value``, else
    $FEDMERGE_DB_CONNECT_TIMEOUT, else 5. A URL's own ``connect_timeout`` wins over both."""
    source = "db connect timeout"
    if value is None:
        value = os.environ.get(ENV_CONNECT_TIMEOUT) or None
        source = f"${ENV_CONNECT_TIMEOUT}"
    if value is None:
        return DEFAULT_CONNECT_TIMEOUT_S
    try:
        seconds = float(value)
    except ValueError:
        raise StoreError(f"{source}: expected seconds, got {value!r}") from None
    if not (math.isfinite(seconds) and seconds > 0):
        raise StoreError(f"{source}: expected seconds > 0, got {value!r}")
    return seconds


def sqlite_path(url: str) -> Path | None:
    """The file a SQLite URL names; None for other backends, memory and ``file:`` URIs."""
    parsed = make_url(url)
    database = parsed.database or ""
    if parsed.get_backend_name() != "sqlite" or database in ("", ":memory:"):
        return None
    if database.startswith("file:"):
        return None
    return Path(database).expanduser()


def make_engine(
    url: str, *, connect_timeout: float | None = None, create_dirs: bool = True
) -> Engine:
    """An engine for ``url``; connects lazily (``upgrade_to_head`` or ``ping`` checks it).

    A server that does not answer fails the connection after ``connect_timeout`` seconds
    (``connect_timeout_s``). A SQLite file is created owner-only (0600; SQLite gives its
    -wal and -shm files the same mode), in a directory made 0700 if ``create_dirs`` has
    to make it."""
    parsed = make_url(url)
    kwargs: dict[str, Any] = {"json_serializer": _json_dumps, "pool_pre_ping": True}
    path = sqlite_path(url)
    if parsed.get_backend_name() == "postgresql":
        # As many connections as a web server's worker threads (anyio's 40) may hold at
        # once: the dashboard's requests then never queue for a connection.
        kwargs.update(pool_size=5, max_overflow=SERVER_MAX_OVERFLOW)
    if parsed.get_backend_name() == "sqlite":
        if (parsed.database or "") in ("", ":memory:"):
            # One shared connection, so every session (and thread) sees the same memory DB.
            kwargs.update(poolclass=StaticPool, connect_args={"check_same_thread": False})
        elif path is not None and create_dirs:
            try:
                private_dir(path.parent)
            except OSError as exc:
                raise StoreUnavailable(url, f"cannot create its directory: {exc}") from exc
    elif parsed.get_backend_name() == "postgresql" and "connect_timeout" not in parsed.query:
        seconds = connect_timeout_s(connect_timeout)
        # libpq (and psycopg) count whole seconds, at least 2.
        kwargs["connect_args"] = {"connect_timeout": max(2, math.ceil(seconds))}
    engine = create_engine(parsed, **kwargs)
    if parsed.get_backend_name() == "sqlite":
        if path is not None:
            event.listen(engine, "do_connect", lambda *_: private_file(path))
        event.listen(engine, "connect", _sqlite_on_connect)
        event.listen(engine, "begin", sqlite_begin)
    return engine


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    # Rows stay readable after the ``with factory.begin()`` block that loaded them.
    return sessionmaker(engine, expire_on_commit=False)


def _connect(engine: Engine) -> Connection:
    url = engine.url.render_as_string(hide_password=False)
    try:
        return engine.connect()
    except DBAPIError as exc:
        raise StoreUnavailable(url, str(exc.orig).strip()) from exc


def ping(engine: Engine) -> None:
    """Raise StoreUnavailable unless the database answers."""
    with _connect(engine):
        pass


def alembic_config(connection: Connection | None = None) -> Config:
    """Alembic's config built in code (no alembic.ini), so it works from an installed wheel."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR).replace("%", "%%"))
    cfg.set_main_option("path_separator", "os")
    cfg.attributes["connection"] = connection
    return cfg


def current_revision(engine: Engine) -> str | None:
    """The schema revision stamped in the database, or None if it has none."""
    with _connect(engine) as conn:
        return MigrationContext.configure(conn).get_current_revision()


def upgrade_to(engine: Engine, revision: str) -> None:
    """Migrate forward to ``revision`` in one transaction; data is kept, nothing dropped."""
    url = engine.url.render_as_string(hide_password=False)
    with _connect(engine) as conn:
        sqlite = conn.dialect.name == "sqlite"
        if sqlite:
            # Batch migrations copy a table and DROP the original; with foreign keys on,
            # that DROP would cascade-delete every child row. The pragma only takes
            # effect outside a transaction, hence the raw DBAPI connection.
            sqlite_pragma(conn.connection.dbapi_connection, "foreign_keys=OFF")
        try:
            tables = inspect(conn).get_table_names()
            if tables and "alembic_version" not in tables:
                raise UnmanagedDatabase(url, tables)
            try:
                command.upgrade(alembic_config(conn), revision)
            except CommandError as exc:  # e.g. a DB stamped by a newer fedmerge
                raise StoreError(f"cannot migrate {mask_url(url)}: {exc}") from exc
            if sqlite and (bad := conn.exec_driver_sql("PRAGMA foreign_key_check").all()):
                raise StoreError(f"migrating {mask_url(url)} broke foreign keys: {bad[:5]}")
            conn.commit()
        finally:
            if sqlite:
                conn.rollback()  # no-op after commit; the pragma needs no open transaction
                sqlite_pragma(conn.connection.dbapi_connection, "foreign_keys=ON")


def upgrade_to_head(engine: Engine) -> None:
    upgrade_to(engine, "head")


@contextmanager
def existing_engine(url: str) -> Iterator[Engine]:
    """An engine on a run store that must already exist, for the commands that only read
    it: ``NoStore`` when the SQLite file is absent (and none is created) or the database
    has no fedmerge schema; ``StoreUnavailable`` when it cannot be reached."""
    path = sqlite_path(url)
    if path is not None and not path.is_file():
        raise NoStore(f"no run store at {path}: nothing has run with this --out-dir yet "
                      f"(or pass --db / ${ENV_DB_URL})")
    engine = make_engine(url, create_dirs=False)
    try:
        if current_revision(engine) is None:
            raise NoStore(f"{mask_url(url)} holds no fedmerge run store (no schema)")
        yield engine
    finally:
        engine.dispose()


@contextmanager
def migrated_engine(url: str) -> Iterator[Engine]:
    """An engine on the store at ``url``, created and migrated to head now (so that an
    unreachable or unmanaged database is said at once), disposed on exit."""
    engine = make_engine(url)
    try:
        upgrade_to_head(engine)
        yield engine
    finally:
        engine.dispose()
