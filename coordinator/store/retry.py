"""Transactions that outlive a database restart.

``in_transaction`` runs one unit of work in its own transaction. When the database goes
away under it (PostgreSQL restarted or failing over, SQLite locked past its busy
timeout), the transaction is rolled back and the work run again after a pause that
doubles each time, a bounded number of times; then ``StoreUnavailable`` is raised.
Anything else (a constraint, a bug) is raised at once: retrying cannot fix it.

A COMMIT can reach the server while its acknowledgement is lost with the connection;
the retry would then write the unit twice. ``done`` guards that: before each retry it is
asked, in the retry's own transaction, whether the work is already in the database.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar

from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from coordinator.store.db import StoreUnavailable

T = TypeVar("T")
log = logging.getLogger(__name__)

# SQLSTATE classes of a lost or refused connection: 08 connection exception, 57 operator
# intervention (admin shutdown, cannot connect now), 53 insufficient resources, 40
# transaction rollback (serialization failure, deadlock).
_TRANSIENT_SQLSTATE_CLASSES = ("08", "57", "53", "40")


@dataclass(frozen=True)
class RetryPolicy:
    """``attempts`` tries in all; pauses of first_delay_s, doubling, capped at max_delay_s
    (the default waits at most about 24 s in all before giving up)."""

    attempts: int = 8
    first_delay_s: float = 0.25
    max_delay_s: float = 8.0

    def delays(self) -> Iterator[float]:
        delay = self.first_delay_s
        for _ in range(self.attempts - 1):
            yield delay
            delay = min(2 * delay, self.max_delay_s)


DEFAULT_RETRY = RetryPolicy()


def is_transient(exc: DBAPIError, backend: str) -> bool:
    """Whether ``exc`` is the database being away for a while, not a fault of the work."""
    if exc.connection_invalidated:
        return True
    if not isinstance(exc, OperationalError | InterfaceError):
        return False
    if backend == "sqlite":  # its OperationalError also means "no such table" etc.
        text = str(exc.orig).lower()
        return "locked" in text or "busy" in text
    sqlstate = getattr(exc.orig, "sqlstate", None)
    return sqlstate is None or sqlstate[:2] in _TRANSIENT_SQLSTATE_CLASSES


def in_transaction(
    sessions: sessionmaker[Session],
    work: Callable[[Session], T],
    *,
    done: Callable[[Session], bool] | None = None,
    policy: RetryPolicy = DEFAULT_RETRY,
    what: str = "transaction",
) -> T | None:
    """``work(s)`` in one transaction, retried as the module says; its result, or None
    when ``done`` finds that an earlier attempt committed after all."""
    engine = sessions.kw["bind"]
    backend = engine.dialect.name
    delays = policy.delays()
    attempt = 1
    while True:
        try:
            with sessions.begin() as s:
                if attempt > 1 and done is not None and done(s):
                    log.warning("%s: committed by attempt %s after all", what, attempt - 1)
                    return None
                return work(s)
        except DBAPIError as exc:
            if not is_transient(exc, backend):
                raise
            delay = next(delays, None)
            reason = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)
            if delay is None:
                raise StoreUnavailable(
                    engine.url.render_as_string(hide_password=False),
                    f"{what} failed {attempt} times, the last: {reason}",
                ) from exc
            log.warning("%s: database unavailable (%s); attempt %s of %s in %.2f s",
                        what, reason, attempt + 1, policy.attempts, delay)
            time.sleep(delay)
            attempt += 1
