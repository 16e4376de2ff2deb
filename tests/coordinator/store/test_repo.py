"""coordinator/store/repo.py and db.py against a real database (SQLite file and PostgreSQL)."""

from __future__ import annotations

import math
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from sqlalchemy import Engine, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from coordinator.store import (
    EvaluationRecord,
    RoundRecord,
    StoreUnavailable,
    UpdateRecord,
    make_engine,
    make_session_factory,
    repo,
    resolve_db_url,
    upgrade_to_head,
)
from coordinator.store.repo import AmbiguousRunId, RoundStateError

T0 = datetime(2025, 3, 1, 12, 0, 0, tzinfo=UTC)


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    engine = make_engine(db_url)
    upgrade_to_head(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def factory(engine: Engine) -> sessionmaker[Session]:
    return make_session_factory(engine)


def new_run(factory: sessionmaker[Session], name: str = "r") -> str:
    with factory.begin() as s:
        return repo.create_run(
            s,
            name=name,
            config={"lr": 0.5, "layers": [8, 4], "nested": {"a": True}},
            mode="global",
            optimizer="adam",
            combiner="median",
            num_rounds_planned=3,
            out_dir="/tmp/out",
            flower_run_id=str(2**64 - 1),
        )


def round_record(number: int, *, tag: str = "", num_updates: int = 2) -> RoundRecord:
    updates = tuple(
        UpdateRecord(
            node_id=str(2**63 + i),  # beyond int64: must survive as text
            accepted=i != 1,
            reason=None if i != 1 else f"non-finite offset{tag}",
            partition_id=i,
            num_examples=100 + i,
            offset_norm=0.25 * (i + 1),
            train_seconds=1.5,
            metrics={"loss": 0.1 * i, "tag": tag},
        )
        for i in range(num_updates)
    )
    evaluations = (
        EvaluationRecord("central", loss=0.7, accuracy=0.8, num_examples=360, metrics={"t": tag}),
        EvaluationRecord("federated", loss=0.6, accuracy=None),
        EvaluationRecord("personalized", loss=None, accuracy=0.9, num_examples=12),
    )
    return RoundRecord(
        number=number,
        started_at=T0 + timedelta(minutes=number),
        finished_at=T0 + timedelta(minutes=number, seconds=30),
        send_s=0.1,
        wait_s=2.5,
        merge_s=0.01,
        evaluate_s=0.3,
        metrics={"train_loss": 0.42, "tag": tag},
        checkpoint_path=f"/tmp/out/round-{number:05d}.safetensors",
        checkpoint_sha256="ab" * 32,
        updates=updates,
        evaluations=evaluations,
    )


def run_round(factory: sessionmaker[Session], run_id: str, record: RoundRecord) -> None:
    with factory.begin() as s:
        repo.start_round(s, run_id, record.number, record.started_at)
    with factory.begin() as s:
        repo.commit_round(s, run_id, record)


def test_run_round_trip(factory: sessionmaker[Session]) -> None:
    run_id = new_run(factory, "digits-adam")
    with factory.begin() as s:
        run = repo.get_run(s, run_id)
    assert run is not None
    assert len(run_id) == 32 and int(run_id, 16) >= 0
    assert (run.name, run.mode, run.optimizer, run.combiner) == (
        "digits-adam",
        "global",
        "adam",
        "median",
    )
    assert run.config == {"lr": 0.5, "layers": [8, 4], "nested": {"a": True}}
    assert run.status == "running" and run.num_rounds_planned == 3
    assert run.flower_run_id == "18446744073709551615" and run.out_dir == "/tmp/out"
    assert run.started_at.tzinfo is not None and run.started_at.utcoffset() == timedelta(0)
    assert run.finished_at is None and run.error is None


def test_round_round_trip_every_field(factory: sessionmaker[Session]) -> None:
    run_id = new_run(factory)
    record = round_record(1)
    run_round(factory, run_id, record)
    with factory.begin() as s:
        (row,) = repo.rounds_of(s, run_id)
        updates = repo.updates_of(s, run_id, 1)
        evaluations = repo.evaluations_of(s, run_id)
    assert row.status == "committed" and row.number == 1 and row.attempts == 1
    assert (row.started_at, row.finished_at) == (record.started_at, record.finished_at)
    assert row.finished_at is not None and row.finished_at.tzinfo is not None
    assert (row.send_s, row.wait_s, row.merge_s, row.evaluate_s) == (0.1, 2.5, 0.01, 0.3)
    assert (row.num_clients, row.num_accepted, row.num_rejected) == (2, 1, 1)
    assert row.metrics == {"train_loss": 0.42, "tag": ""}
    assert row.checkpoint_path == record.checkpoint_path
    assert row.checkpoint_sha256 == "ab" * 32

    got = [
        UpdateRecord(
            node_id=u.node_id,
            accepted=u.accepted,
            reason=u.reason,
            partition_id=u.partition_id,
            num_examples=u.num_examples,
            offset_norm=u.offset_norm,
            train_seconds=u.train_seconds,
            metrics=u.metrics,
        )
        for u in updates
    ]
    assert got == list(record.updates)
    got_evals = {
        e.kind: EvaluationRecord(e.kind, e.loss, e.accuracy, e.num_examples, e.metrics)
        for e in evaluations
    }
    assert got_evals == {e.kind: e for e in record.evaluations}


def test_datetimes_are_utc_and_naive_ones_refused(factory: sessionmaker[Session]) -> None:
    run_id = new_run(factory)
    plus_two = timezone(timedelta(hours=2))
    with factory.begin() as s:
        repo.start_round(s, run_id, 1, datetime(2025, 3, 1, 14, 0, tzinfo=plus_two))
    with factory.begin() as s:
        (row,) = repo.rounds_of(s, run_id)
    assert row.started_at == datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
    assert row.started_at.tzinfo == UTC
    with pytest.raises(Exception, match="naive datetime"), factory.begin() as s:
        repo.start_round(s, run_id, 2, datetime(2025, 3, 1, 12, 0))


def test_non_finite_metrics_are_stored_as_null(factory: sessionmaker[Session]) -> None:
    run_id = new_run(factory)
    record = round_record(1)
    diverged = RoundRecord(**{**record.__dict__, "metrics": {"loss": math.nan, "x": [math.inf]}})
    run_round(factory, run_id, diverged)
    with factory.begin() as s:
        (row,) = repo.rounds_of(s, run_id)
    assert row.metrics == {"loss": None, "x": [None]}


def test_commit_round_replaces_an_earlier_attempt(factory: sessionmaker[Session]) -> None:
    run_id = new_run(factory)
    run_round(factory, run_id, round_record(1))
    with factory.begin() as s:
        repo.start_round(s, run_id, 2, T0)
    with factory.begin() as s:  # the coordinator died in round 2; the next one resumes
        assert repo.abort_inflight_rounds(s, run_id) == [2]
    run_round(factory, run_id, round_record(2, tag="retry", num_updates=3))

    with factory.begin() as s:
        rounds = repo.rounds_of(s, run_id)
        updates = repo.updates_of(s, run_id, 2)
        evaluations = [e for e in repo.evaluations_of(s, run_id) if e.round_number == 2]
    assert [(r.number, r.status, r.attempts) for r in rounds] == [
        (1, "committed", 1),
        (2, "committed", 2),
    ]
    assert len(updates) == 3 and {u.metrics["tag"] for u in updates} == {"retry"}
    assert len(evaluations) == 3
    assert rounds[1].metrics == {"train_loss": 0.42, "tag": "retry"}


def test_rows_of_an_interrupted_attempt_are_removed_on_commit(
    factory: sessionmaker[Session],
) -> None:
    """A discarded committed round left updates behind: the redo must not double them."""
    run_id = new_run(factory)
    for n in (1, 2):
        run_round(factory, run_id, round_record(n, tag="first"))
    with factory.begin() as s:
        assert repo.discard_rounds_after(s, run_id, 1) == [2]
    run_round(factory, run_id, round_record(2, tag="second"))
    with factory.begin() as s:
        updates = repo.updates_of(s, run_id)
        (r2,) = [r for r in repo.rounds_of(s, run_id) if r.number == 2]
    assert [u.round_number for u in updates] == [1, 1, 2, 2]
    assert {u.metrics["tag"] for u in updates if u.round_number == 2} == {"second"}
    assert r2.attempts == 2 and r2.status == "committed"


def test_round_state_errors(factory: sessionmaker[Session]) -> None:
    run_id = new_run(factory)
    with pytest.raises(RoundStateError, match="missing"), factory.begin() as s:
        repo.commit_round(s, run_id, round_record(1))
    run_round(factory, run_id, round_record(1))
    with pytest.raises(RoundStateError, match="already committed"), factory.begin() as s:
        repo.start_round(s, run_id, 1, T0)
    with pytest.raises(RoundStateError, match="committed"), factory.begin() as s:
        repo.commit_round(s, run_id, round_record(1))


def test_restarting_a_running_round_counts_attempts(factory: sessionmaker[Session]) -> None:
    run_id = new_run(factory)
    for _ in range(3):
        with factory.begin() as s:
            repo.start_round(s, run_id, 1, T0)
    with factory.begin() as s:
        (row,) = repo.rounds_of(s, run_id)
    assert (row.status, row.attempts) == ("running", 3)


def test_abort_inflight_rounds_marks_and_records_events(factory: sessionmaker[Session]) -> None:
    run_id = new_run(factory)
    other = new_run(factory, "other")
    run_round(factory, run_id, round_record(1))
    with factory.begin() as s:
        repo.start_round(s, run_id, 2, T0)
        repo.start_round(s, other, 1, T0)
    with factory.begin() as s:
        assert repo.abort_inflight_rounds(s, run_id) == [2]
    with factory.begin() as s:
        assert repo.abort_inflight_rounds(s, run_id) == []  # nothing left in flight
        statuses = {r.number: r.status for r in repo.rounds_of(s, run_id)}
        events = repo.events_of(s, run_id)
        other_rounds = repo.rounds_of(s, other)
    assert statuses == {1: "committed", 2: "aborted"}
    assert [(e.kind, "round 2" in e.message) for e in events] == [("round-aborted", True)]
    assert events[0].at.tzinfo is not None
    assert [r.status for r in other_rounds] == ["running"]  # other runs untouched


def test_committed_rounds_newest_first(factory: sessionmaker[Session]) -> None:
    run_id = new_run(factory)
    with factory.begin() as s:
        assert repo.last_committed_round(s, run_id) is None
    for n in (1, 2, 3):
        run_round(factory, run_id, round_record(n))
    with factory.begin() as s:
        repo.start_round(s, run_id, 4, T0)  # running: never a resume point
    with factory.begin() as s:
        last = repo.last_committed_round(s, run_id)
        newest_first = [r.number for r in repo.committed_rounds(s, run_id)]
    assert last is not None and last.number == 3
    assert newest_first == [3, 2, 1]


def test_finish_resume_and_latest_unfinished(factory: sessionmaker[Session]) -> None:
    done, crashed = new_run(factory, "done"), new_run(factory, "crashed")
    with factory.begin() as s:
        repo.finish_run(s, done, "completed")
        repo.finish_run(s, crashed, "failed", error="CUDA out of memory")
    with factory.begin() as s:
        run = repo.get_run(s, crashed)
        latest = repo.latest_unfinished_run(s)
        assert [e.kind for e in repo.events_of(s, crashed)] == ["error"]
    assert run is not None and run.status == "failed" and run.error == "CUDA out of memory"
    assert run.finished_at is not None
    assert latest is not None and latest.id == crashed

    with factory.begin() as s:
        repo.mark_resumed(s, crashed, flower_run_id="42")
        repo.add_event(s, crashed, "info", "hello")
    with factory.begin() as s:
        run = repo.get_run(s, crashed)
        kinds = [e.kind for e in repo.events_of(s, crashed)]
    assert run is not None and (run.status, run.finished_at, run.error) == ("running", None, None)
    assert run.flower_run_id == "42" and kinds == ["error", "resumed", "info"]

    with pytest.raises(ValueError, match="finish status"), factory.begin() as s:
        repo.finish_run(s, crashed, "running")
    with factory.begin() as s:
        repo.finish_run(s, crashed, "completed")
    with factory.begin() as s:
        assert repo.latest_unfinished_run(s) is None


def test_list_runs_and_get_by_prefix(factory: sessionmaker[Session]) -> None:
    ids = [new_run(factory, f"run{i}") for i in range(3)]
    with factory.begin() as s:
        assert [r.id for r in repo.list_runs(s)] == ids[::-1]  # newest first
        for run_id in ids:
            found = repo.get_run(s, run_id[:12].upper())
            assert found is not None and found.id == run_id
        assert repo.get_run(s, "zz") is None
        assert repo.get_run(s, "") is None
        assert repo.get_run(s, "0" * 32) is None
        assert repo.get_run(s, "%") is None  # a LIKE wildcard must not match everything
    # Force two ids with a common prefix: an ambiguous prefix is an error, not a guess.
    with factory.begin() as s:
        s.execute(
            text("UPDATE runs SET id = 'abc' || substr(id, 4) WHERE id IN (:a, :b)"),
            {"a": ids[0], "b": ids[1]},
        )
    with factory.begin() as s, pytest.raises(AmbiguousRunId, match="abc"):
        repo.get_run(s, "abc")


def test_foreign_keys_are_enforced(factory: sessionmaker[Session]) -> None:
    with pytest.raises(IntegrityError), factory.begin() as s:
        repo.start_round(s, "no-such-run", 1, T0)


def test_sqlite_connection_pragmas(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'deep' / 'dir' / 'x.db'}")
    try:
        with engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
            assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 30_000
    finally:
        engine.dispose()
    assert (tmp_path / "deep" / "dir" / "x.db").exists()


def test_in_memory_sqlite_is_one_database_for_all_sessions() -> None:
    engine = make_engine("sqlite://")
    upgrade_to_head(engine)
    factory = make_session_factory(engine)
    run_id = new_run(factory)
    with factory.begin() as s:
        assert repo.get_run(s, run_id) is not None
    engine.dispose()


def test_unreachable_database_is_named_with_password_masked() -> None:
    engine = make_engine("postgresql+psycopg://fm:hunter2@127.0.0.1:1/nowhere")
    with pytest.raises(StoreUnavailable) as info:
        upgrade_to_head(engine)
    message = str(info.value)
    assert "127.0.0.1:1/nowhere" in message and "***" in message
    assert "hunter2" not in message
    assert "refused" in message.lower() or "failed" in message.lower()  # the driver's words


def test_resolve_db_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FEDMERGE_DB_URL", raising=False)
    assert resolve_db_url(None, tmp_path) == f"sqlite:///{tmp_path.resolve()}/fedmerge.db"
    assert resolve_db_url("", tmp_path).startswith("sqlite:///")
    monkeypatch.setenv("FEDMERGE_DB_URL", "postgresql+psycopg://env/db")
    assert resolve_db_url(None, tmp_path) == "postgresql+psycopg://env/db"
    assert resolve_db_url("sqlite:///explicit.db", tmp_path) == "sqlite:///explicit.db"


def test_store_imports_neither_torch_nor_flwr() -> None:
    code = (
        "import sys, coordinator.store, coordinator.store.repo, coordinator.store.models;"
        "bad = sorted(m for m in ('torch', 'flwr') if m in sys.modules);"
        "sys.exit(str(bad) if bad else 0)"
    )
    root = Path(__file__).resolve().parents[3]
    result = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
