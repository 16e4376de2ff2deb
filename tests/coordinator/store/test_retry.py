"""in_transaction: transient database failures are retried with a growing, bounded
pause; other errors at once; a commit whose acknowledgement was lost is not redone."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import event
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from coordinator.store import (
    RetryPolicy,
    RoundRecord,
    StoreUnavailable,
    in_transaction,
    make_engine,
    make_session_factory,
    repo,
    upgrade_to_head,
)
from coordinator.store import retry as retry_module

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def lost_connection() -> OperationalError:
    return OperationalError("COMMIT", {}, Exception("server closed the connection"),
                            connection_invalidated=True)


@pytest.fixture
def sessions(tmp_path: Path) -> Iterator[sessionmaker[Session]]:
    engine = make_engine(f"sqlite:///{tmp_path / 'fedmerge.db'}")
    upgrade_to_head(engine)
    yield make_session_factory(engine)
    engine.dispose()


@pytest.fixture
def pauses(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    slept: list[float] = []
    monkeypatch.setattr(retry_module.time, "sleep", slept.append)
    return slept


def _run(sessions: sessionmaker[Session]) -> str:
    with sessions.begin() as s:
        return repo.create_run(s, name="r", config={}, mode="global", optimizer="sgd",
                               combiner="mean", num_rounds_planned=3, out_dir="/x")


def test_transient_failures_are_retried_with_growing_pauses(
    sessions: sessionmaker[Session], pauses: list[float]
) -> None:
    calls = []

    def work(s: Session) -> str:
        calls.append(1)
        if len(calls) < 4:
            raise lost_connection()
        return "written"

    assert in_transaction(sessions, work) == "written"
    assert len(calls) == 4 and pauses == [0.25, 0.5, 1.0]


def test_it_gives_up_after_the_policys_attempts(
    sessions: sessionmaker[Session], pauses: list[float]
) -> None:
    def work(s: Session) -> None:
        raise lost_connection()

    policy = RetryPolicy(attempts=5, first_delay_s=1.0, max_delay_s=3.0)
    with pytest.raises(StoreUnavailable, match="round 7 commit failed 5 times"):
        in_transaction(sessions, work, policy=policy, what="round 7 commit")
    assert pauses == [1.0, 2.0, 3.0, 3.0]


def test_other_errors_are_not_retried(
    sessions: sessionmaker[Session], pauses: list[float]
) -> None:
    calls = []

    def work(s: Session) -> None:
        calls.append(1)
        raise IntegrityError("INSERT", {}, Exception("UNIQUE constraint failed"))

    with pytest.raises(IntegrityError):
        in_transaction(sessions, work)
    assert len(calls) == 1 and pauses == []


def test_sqlite_no_such_table_is_not_transient(
    tmp_path: Path, pauses: list[float]
) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'empty.db'}")  # never migrated
    with pytest.raises(OperationalError, match="no such table"):
        in_transaction(make_session_factory(engine), lambda s: repo.list_runs(s))
    engine.dispose()
    assert pauses == []


def test_a_commit_whose_acknowledgement_was_lost_is_not_redone(
    sessions: sessionmaker[Session], pauses: list[float]
) -> None:
    run_id = _run(sessions)
    with sessions.begin() as s:
        repo.start_round(s, run_id, 1, T0)
    record = RoundRecord(1, T0, T0, 0, 0, 0, 0, {}, "/ck/round-1", "ab" * 32, (), ())
    lost = []

    @event.listens_for(Session, "after_commit")
    def ack_lost(session: Session) -> None:  # the COMMIT went through; its answer did not
        if not lost:
            lost.append(1)
            raise lost_connection()

    try:
        in_transaction(sessions, lambda s: repo.commit_round(s, run_id, record),
                       done=lambda s: repo.round_is_committed(s, run_id, record))
    finally:
        event.remove(Session, "after_commit", ack_lost)
    assert lost and len(pauses) == 1
    with sessions() as s:
        rounds = [(r.number, r.status) for r in repo.rounds_of(s, run_id)]
    assert rounds == [(1, "committed")]


def test_a_run_whose_commit_gave_up_still_ends_failed_with_the_reason(
    sessions: sessionmaker[Session], pauses: list[float]
) -> None:
    """The database away for longer than a commit's retries (about 24 s): the round's
    commit gives up, and the run's end, retried longer, marks it failed and resumable,
    with the reason, once the database is back, and no round stays 'running'."""
    from coordinator.journal import RunJournal

    run_id = _run(sessions)
    journal = RunJournal(sessions, run_id)
    journal.open_round(1, T0)
    engine = sessions.kw["bind"]
    down = {"begins": 0}

    def database_away(conn) -> None:  # the commit's 8 attempts and the end's first 10
        down["begins"] += 1
        if down["begins"] <= 18:
            raise lost_connection()

    event.listen(engine, "begin", database_away)
    try:
        record = RoundRecord(1, T0, T0, 0.0, 0.0, 0.0, 0.0, {}, None, None, (), ())
        with pytest.raises(StoreUnavailable) as gave_up:
            journal.commit(record)
        journal.finish("failed", error=f"StoreUnavailable: {gave_up.value}")
    finally:
        event.remove(engine, "begin", database_away)
    assert down["begins"] == 19 and sum(pauses) > 2 * 24  # the end waited past 24 s
    with sessions() as s:
        run = repo.get_run(s, run_id)
        rounds = repo.rounds_of(s, run_id)
        resumable = repo.latest_unfinished_run(s)
    assert run.status == "failed" and "round 1 commit failed 8 times" in run.error
    assert [(r.number, r.status) for r in rounds] == [(1, "aborted")]
    assert resumable is not None and resumable.id == run_id
