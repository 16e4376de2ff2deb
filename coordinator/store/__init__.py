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
    NoStore,
    StoreError,
    StoreUnavailable,
    UnmanagedDatabase,
    connect_timeout_s,
    current_revision,
    existing_engine,
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
from coordinator.store.retry import DEFAULT_RETRY, RetryPolicy, in_transaction

__all__ = [
    "DEFAULT_RETRY",
    "EvaluationRecord",
    "NoStore",
    "RetryPolicy",
    "RoundRecord",
    "StoreError",
    "StoreUnavailable",
    "UnmanagedDatabase",
    "UpdateRecord",
    "connect_timeout_s",
    "current_revision",
    "existing_engine",
    "in_transaction",
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
