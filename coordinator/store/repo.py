"""Reads and writes of the run store: plain functions that take a ``Session``.

The caller frames each unit of work (``with factory.begin() as s:``) so a round
is committed whole or not at all. Writes take ``records`` values, never ORM
objects; reads return ORM rows, loaded with ``expire_on_commit=False``.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Select, delete, exists, func, or_, select
from sqlalchemy.orm import Session

from coordinator.store.db import StoreError
from coordinator.store.models import (
    ClientUpdateRow,
    EvaluationRow,
    RoundRow,
    RunEventRow,
    RunRow,
)
from coordinator.store.records import RUN_STATUSES, EvaluationRecord, RoundRecord


class RunNotFound(StoreError):
    pass


class AmbiguousRunId(StoreError):
    """A run id prefix that matches more than one run."""


class RoundStateError(StoreError):
    """A round write that contradicts the round's recorded state (e.g. a double commit)."""


def _now() -> datetime:
    return datetime.now(UTC)


def _run(s: Session, run_id: str) -> RunRow:
    run = s.get(RunRow, run_id)
    if run is None:
        raise RunNotFound(f"no run {run_id!r}")
    return run


def _round(s: Session, run_id: str, number: int) -> RoundRow | None:
    stmt = select(RoundRow).where(RoundRow.run_id == run_id, RoundRow.number == number)
    return s.scalars(stmt).one_or_none()


# ---- runs -------------------------------------------------------------------------


def create_run(
    s: Session,
    *,
    name: str,
    config: dict[str, Any],
    mode: str,
    optimizer: str,
    combiner: str,
    num_rounds_planned: int,
    out_dir: str,
    flower_run_id: str | None = None,
) -> str:
    """Insert a running run; returns its id (uuid4 hex)."""
    run_id = uuid.uuid4().hex
    s.add(
        RunRow(
            id=run_id,
            name=name,
            config=config,
            mode=mode,
            optimizer=optimizer,
            combiner=combiner,
            status="running",
            num_rounds_planned=num_rounds_planned,
            started_at=_now(),
            out_dir=str(out_dir),
            flower_run_id=None if flower_run_id is None else str(flower_run_id),
        )
    )
    s.flush()  # surface constraint errors here, not at the caller's commit
    return run_id


def finish_run(s: Session, run_id: str, status: str, error: str | None = None) -> None:
    """End a run as 'completed', 'failed' or 'interrupted', with the error if any."""
    if status not in RUN_STATUSES or status == "running":
        raise ValueError(f"finish status {status!r} is not one of {RUN_STATUSES[1:]}")
    run = _run(s, run_id)
    run.status, run.error, run.finished_at = status, error, _now()
    if error is not None:
        add_event(s, run_id, "error", error)


def mark_resumed(
    s: Session, run_id: str, *, flower_run_id: str | None = None, message: str = ""
) -> None:
    """A coordinator picked this run up again: running, not finished, a 'resumed' event."""
    run = _run(s, run_id)
    run.status, run.finished_at, run.error = "running", None, None
    if flower_run_id is not None:
        run.flower_run_id = str(flower_run_id)
    add_event(s, run_id, "resumed", message or f"resumed (flower run {run.flower_run_id})")


def add_event(s: Session, run_id: str, kind: str, message: str) -> None:
    s.add(RunEventRow(run_id=run_id, at=_now(), kind=kind, message=message))


def latest_unfinished_run(s: Session) -> RunRow | None:
    """The newest run that did not complete (running, interrupted or failed)."""
    stmt = (
        select(RunRow)
        .where(RunRow.status.in_(("running", "interrupted", "failed")))
        .order_by(RunRow.started_at.desc())
        .limit(1)
    )
    return s.scalars(stmt).first()


def get_run(s: Session, run_id: str) -> RunRow | None:
    """The run with this id, Flower run id, or unique id prefix (like git), or the newest
    run for 'latest'; None if none matches."""
    run_id = run_id.strip().lower()
    if not run_id:
        return None
    if run_id == "latest":
        return s.scalars(select(RunRow).order_by(RunRow.started_at.desc()).limit(1)).first()
    if (run := s.get(RunRow, run_id)) is not None:
        return run
    if run_id.isdigit() and (run := s.scalars(  # Flower's run id, as `fedmerge submit` says it
            select(RunRow).where(RunRow.flower_run_id == run_id)
            .order_by(RunRow.started_at.desc()).limit(1)).first()) is not None:
        return run
    if run_id.strip("0123456789abcdef"):  # ids are hex: anything else can't match
        return None
    matches = s.scalars(select(RunRow).where(RunRow.id.startswith(run_id)).limit(2)).all()
    if len(matches) > 1:
        raise AmbiguousRunId(f"run id prefix {run_id!r} matches more than one run")
    return matches[0] if matches else None


def annotate_run(s: Session, run_id: str, *, tags: Sequence[str], notes: str) -> RunRow:
    """Replace a run's tags and notes (the dashboard's annotations)."""
    run = _run(s, run_id)
    run.tags, run.notes = list(tags), notes
    return run


def list_runs(s: Session) -> Sequence[RunRow]:
    return s.scalars(select(RunRow).order_by(RunRow.started_at.desc())).all()


# ---- rounds -----------------------------------------------------------------------


# Everything a commit fills in; a restarted round starts without them.
_ROUND_RESULTS = (
    "finished_at",
    "send_s",
    "wait_s",
    "merge_s",
    "evaluate_s",
    "num_clients",
    "num_accepted",
    "num_rejected",
    "metrics",
    "checkpoint_path",
    "checkpoint_sha256",
)


def start_round(s: Session, run_id: str, number: int, started_at: datetime) -> None:
    """Insert round ``number`` as running, or restart an aborted/running one (attempts + 1)."""
    row = _round(s, run_id, number)
    if row is None:
        s.add(RoundRow(run_id=run_id, number=number, status="running", started_at=started_at))
        s.flush()
        return
    if row.status == "committed":
        raise RoundStateError(
            f"run {run_id} round {number} is already committed; "
            "discard_rounds_after() it first to redo it"
        )
    row.status, row.started_at, row.attempts = "running", started_at, row.attempts + 1
    # A discarded round may still carry its old results: clear them all.
    for column in _ROUND_RESULTS:
        setattr(row, column, None)


def commit_round(s: Session, run_id: str, record: RoundRecord) -> None:
    """Record a finished round whole: its row, client updates and evaluations.

    Rows an earlier attempt of the same round number left behind are deleted first,
    so each round is in the database once.
    """
    row = _round(s, run_id, record.number)
    if row is None or row.status != "running":
        state = "missing" if row is None else row.status
        raise RoundStateError(
            f"run {run_id} round {record.number} is {state}; start_round() it before commit"
        )
    for table in (ClientUpdateRow, EvaluationRow):
        s.execute(delete(table).where(table.run_id == run_id, table.round_number == record.number))
    accepted = sum(u.accepted for u in record.updates)
    row.status = "committed"
    row.started_at, row.finished_at = record.started_at, record.finished_at
    row.send_s, row.wait_s = record.send_s, record.wait_s
    row.merge_s, row.evaluate_s = record.merge_s, record.evaluate_s
    row.num_clients, row.num_accepted = len(record.updates), accepted
    row.num_rejected = len(record.updates) - accepted
    row.metrics = dict(record.metrics)
    row.checkpoint_path, row.checkpoint_sha256 = record.checkpoint_path, record.checkpoint_sha256
    s.add_all(
        ClientUpdateRow(
            run_id=run_id,
            round_number=record.number,
            node_id=str(u.node_id),
            partition_id=u.partition_id,
            num_examples=u.num_examples,
            offset_norm=u.offset_norm,
            metrics=dict(u.metrics),
            accepted=u.accepted,
            reason=u.reason,
            train_seconds=u.train_seconds,
        )
        for u in record.updates
    )
    for e in record.evaluations:
        add_evaluation(s, run_id, record.number, e)
    if record.previous_evaluations:
        replace_client_evaluations(s, run_id, record.number - 1, record.previous_evaluations)
    s.flush()


def set_round_finished(s: Session, run_id: str, number: int, finished_at: datetime) -> None:
    """The committed round's end, written once its commit has returned (so the round's
    recorded time includes its own commit)."""
    row = _round(s, run_id, number)
    if row is None or row.status != "committed":
        state = "missing" if row is None else row.status
        raise RoundStateError(f"run {run_id} round {number} is {state}, not committed")
    row.finished_at = finished_at


def round_is_committed(s: Session, run_id: str, record: RoundRecord) -> bool:
    """Whether ``record`` is in the store already: a retried commit whose first COMMIT
    went through though its acknowledgement was lost."""
    row = _round(s, run_id, record.number)
    return (row is not None and row.status == "committed"
            and row.checkpoint_sha256 == record.checkpoint_sha256)


def _abort(s: Session, run_id: str, rows: Sequence[RoundRow], why: str) -> list[int]:
    for row in rows:
        row.status = "aborted"
        add_event(s, run_id, "round-aborted", f"round {row.number} aborted: {why}")
    return [row.number for row in rows]


def abort_inflight_rounds(s: Session, run_id: str) -> list[int]:
    """Rounds left 'running' (the coordinator died mid-round) become 'aborted', with an event."""
    stmt = (
        select(RoundRow)
        .where(RoundRow.run_id == run_id, RoundRow.status == "running")
        .order_by(RoundRow.number)
    )
    return _abort(s, run_id, s.scalars(stmt).all(), "in flight when the coordinator stopped")


def discard_rounds_after(s: Session, run_id: str, number: int) -> list[int]:
    """Abort every round after ``number`` (resuming from an older checkpoint redoes them)."""
    stmt = (
        select(RoundRow)
        .where(RoundRow.run_id == run_id, RoundRow.number > number, RoundRow.status != "aborted")
        .order_by(RoundRow.number)
    )
    return _abort(s, run_id, s.scalars(stmt).all(), f"run resumed from round {number}")


def _committed_newest_first(run_id: str) -> Select[tuple[RoundRow]]:
    return (
        select(RoundRow)
        .where(RoundRow.run_id == run_id, RoundRow.status == "committed")
        .order_by(RoundRow.number.desc())
    )


def committed_rounds(s: Session, run_id: str) -> Sequence[RoundRow]:
    """Committed rounds, newest first: resume falls back along this list past bad checkpoints."""
    return s.scalars(_committed_newest_first(run_id)).all()


def last_committed_round(s: Session, run_id: str) -> RoundRow | None:
    return s.scalars(_committed_newest_first(run_id).limit(1)).first()


def rounds_of(s: Session, run_id: str) -> Sequence[RoundRow]:
    stmt = select(RoundRow).where(RoundRow.run_id == run_id).order_by(RoundRow.number)
    return s.scalars(stmt).all()


def committed_round_counts(s: Session) -> dict[str, int]:
    """Committed rounds per run id, in one query (runs with none are absent)."""
    stmt = (
        select(RoundRow.run_id, func.count(RoundRow.id))
        .where(RoundRow.status == "committed")
        .group_by(RoundRow.run_id)
    )
    return {run_id: n for run_id, n in s.execute(stmt).all()}


# ---- per-round detail -------------------------------------------------------------


def updates_of(
    s: Session, run_id: str, round_number: int | None = None
) -> Sequence[ClientUpdateRow]:
    stmt = select(ClientUpdateRow).where(ClientUpdateRow.run_id == run_id)
    if round_number is not None:
        stmt = stmt.where(ClientUpdateRow.round_number == round_number)
    return s.scalars(stmt.order_by(ClientUpdateRow.round_number, ClientUpdateRow.id)).all()


def evaluations_of(s: Session, run_id: str) -> Sequence[EvaluationRow]:
    stmt = (
        select(EvaluationRow)
        .where(EvaluationRow.run_id == run_id)
        .order_by(EvaluationRow.round_number, EvaluationRow.kind, EvaluationRow.id)
    )
    return s.scalars(stmt).all()


def committed_evaluations(s: Session, run_id: str) -> Sequence[EvaluationRow]:
    """The evaluations that count: the initial model's (round 0) and those of committed
    rounds. A round a resume discarded keeps its rows until it is redone, but they are
    history, not results: ``fedmerge show`` and the dashboard both read this."""
    committed = exists().where(
        RoundRow.run_id == EvaluationRow.run_id, RoundRow.number == EvaluationRow.round_number,
        RoundRow.status == "committed",
    )
    stmt = (
        select(EvaluationRow)
        .where(EvaluationRow.run_id == run_id,
               or_(EvaluationRow.round_number == 0, committed))
        .order_by(EvaluationRow.round_number, EvaluationRow.kind, EvaluationRow.id)
    )
    return s.scalars(stmt).all()


def events_of(s: Session, run_id: str) -> Sequence[RunEventRow]:
    stmt = (
        select(RunEventRow)
        .where(RunEventRow.run_id == run_id)
        .order_by(RunEventRow.at, RunEventRow.id)
    )
    return s.scalars(stmt).all()


CLIENT_EVALUATION_KINDS = ("federated", "personalized")


def replace_client_evaluations(
    s: Session, run_id: str, round_number: int, records: Sequence[EvaluationRecord]
) -> None:
    """The clients' evaluations of a round's theta, in place of any recorded before (a
    round redone on resume evaluates it again)."""
    s.execute(delete(EvaluationRow).where(
        EvaluationRow.run_id == run_id, EvaluationRow.round_number == round_number,
        EvaluationRow.kind.in_(CLIENT_EVALUATION_KINDS)))
    for e in records:
        add_evaluation(s, run_id, round_number, e)


def has_client_evaluation(s: Session, run_id: str, round_number: int) -> bool:
    """Whether a round's theta has a federated or personalized evaluation recorded."""
    return bool(s.scalar(select(exists().where(
        EvaluationRow.run_id == run_id, EvaluationRow.round_number == round_number,
        EvaluationRow.kind.in_(CLIENT_EVALUATION_KINDS)))))


def add_evaluation(s: Session, run_id: str, round_number: int, record: EvaluationRecord) -> None:
    """An evaluation outside a round commit (the initial model's, as round 0)."""
    s.add(
        EvaluationRow(
            run_id=run_id,
            round_number=round_number,
            kind=record.kind,
            loss=record.loss,
            accuracy=record.accuracy,
            num_examples=record.num_examples,
            metrics=dict(record.metrics),
        )
    )
