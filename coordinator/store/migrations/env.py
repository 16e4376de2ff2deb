"""Alembic environment for the run store, driven from code (``db.upgrade_to``).

The caller passes an open connection in ``config.attributes["connection"]``, so
migrations run inside its transaction on its engine (with its SQLite pragmas).
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection

from coordinator.store.models import Base

config = context.config


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        compare_type=True,
        # SQLite can't ALTER most things: batch mode copies the table instead.
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()


def _main() -> None:
    if context.is_offline_mode():
        raise RuntimeError("offline (--sql) migrations are not supported; use db.upgrade_to")
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    # Alembic's own CLI (e.g. `revision --autogenerate` with sqlalchemy.url set in its
    # config): open our engine for that URL.
    from coordinator.store.db import make_engine

    engine = make_engine(config.get_main_option("sqlalchemy.url") or "")
    with engine.begin() as conn:
        _run(conn)
    engine.dispose()


_main()
