"""The run store: every run, round, client update and evaluation, in SQL.

SQLite by default, PostgreSQL by URL. Imports neither torch nor flwr: the
dashboard reads the store with only SQLAlchemy installed.

    engine = make_engine(resolve_db_url(None, out_dir)); upgrade_to_head(engine)
    factory = make_session_factory(engine)
    with factory.begin() as s:
        run_id = repo.create_run(s, ...)
"""

from coordinator.store import repo
from coordinator.store.db import (
    StoreError,
    StoreUnavailable,
    UnmanagedDatabase,
    current_revision,
    make_engine,
    make_session_factory,
    mask_url,
    migrated_engine,
    ping,
    resolve_db_url,
    upgrade_to,
    upgrade_to_head,
)
from coordinator.store.records import EvaluationRecord, RoundRecord, UpdateRecord

__all__ = [
    "EvaluationRecord",
    "RoundRecord",
    "StoreError",
    "StoreUnavailable",
    "UnmanagedDatabase",
    "UpdateRecord",
    "current_revision",
    "make_engine",
    "make_session_factory",
    "mask_url",
    "migrated_engine",
    "ping",
    "repo",
    "resolve_db_url",
    "upgrade_to",
    "upgrade_to_head",
]
