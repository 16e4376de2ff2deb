"""Every read the dashboard makes, in one place: pages and JSON both call these.

Each function takes a ``Session`` and returns ``schemas`` values, never ORM rows, so a
template and an API response are built from the same object. Client updates and
evaluations count only for committed rounds (and round 0, the initial model): a round
discarded by a resume is history in ``rounds``, not in the totals or the plots.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import ColumnElement, Select, case, distinct, exists, func, or_, select
from sqlalchemy.orm import InstrumentedAttribute, Session

from coordinator.store import repo
from coordinator.store.models import (
    ClientUpdateRow,
    EvaluationRow,
    RoundRow,
    RunRow,
)
from dashboard.schemas import (
    CheckpointPublic,
    ClientPublic,
    ClientsPublic,
    EvaluationPublic,
    EvaluationsPublic,
    EventPublic,
    RejectionPublic,
    RoundPublic,
    RoundsPublic,
    RunDetailPublic,
    RunPublic,
    RunsPublic,
)

CHECKPOINT_SUFFIX = ".safetensors"
NO_REASON = "(no reason recorded)"


class UnknownRun(LookupError):
    """No run has this id (or the prefix matches several)."""


class UnknownCheckpoint(LookupError):
    """The round has no checkpoint, or its file is gone."""


def checkpoint_url(run_id: str, number: int) -> str:
    return f"/runs/{run_id}/checkpoints/{number}{CHECKPOINT_SUFFIX}"


def _committed(run_id: Any, number: InstrumentedAttribute[int]) -> ColumnElement[bool]:
    return exists().where(
        RoundRow.run_id == run_id, RoundRow.number == number, RoundRow.status == "committed"
    )


def _counted_evaluation() -> ColumnElement[bool]:
    return or_(
        EvaluationRow.round_number == 0,
        _committed(EvaluationRow.run_id, EvaluationRow.round_number),
    )


def find_run(s: Session, run_id: str) -> RunRow:
    """The run with this id or unique id prefix; UnknownRun otherwise."""
    try:
        run = repo.get_run(s, run_id)
    except repo.AmbiguousRunId as exc:
        raise UnknownRun(str(exc)) from exc
    if run is None:
        raise UnknownRun(f"No run has the id {run_id!r}.")
    return run


def _summaries(s: Session, run_id: str | None = None) -> list[RunPublic]:
    """Every run's summary, or only ``run_id``'s (then each count reads that run's rows
    only, not the whole store's)."""

    def only(column: Any) -> tuple[ColumnElement[bool], ...]:
        return () if run_id is None else (column == run_id,)

    done = (
        select(RoundRow.run_id, func.count(RoundRow.id).label("n"))
        .where(RoundRow.status == "committed", *only(RoundRow.run_id))
        .group_by(RoundRow.run_id)
        .subquery()
    )
    nodes = (
        select(ClientUpdateRow.run_id, func.count(distinct(ClientUpdateRow.node_id)).label("n"))
        .where(_committed(ClientUpdateRow.run_id, ClientUpdateRow.round_number),
               *only(ClientUpdateRow.run_id))
        .group_by(ClientUpdateRow.run_id)
        .subquery()
    )
    best = (
        select(EvaluationRow.run_id, func.max(EvaluationRow.accuracy).label("acc"))
        .where(EvaluationRow.kind == "central", _counted_evaluation(),
               *only(EvaluationRow.run_id))
        .group_by(EvaluationRow.run_id)
        .subquery()
    )
    stmt: Select[Any] = (
        select(RunRow, done.c.n, nodes.c.n, best.c.acc)
        .outerjoin(done, done.c.run_id == RunRow.id)
        .outerjoin(nodes, nodes.c.run_id == RunRow.id)
        .outerjoin(best, best.c.run_id == RunRow.id)
        .order_by(RunRow.started_at.desc(), RunRow.id)
    )
    stmt = stmt.where(*only(RunRow.id))
    return [
        RunPublic(
            **_run_fields(run),
            rounds_done=n_done or 0,
            num_clients=n_nodes or 0,
            best_central_accuracy=acc,
        )
        for run, n_done, n_nodes, acc in s.execute(stmt).all()
    ]


def _run_fields(run: RunRow) -> dict[str, Any]:
    return {
        "id": run.id, "name": run.name, "status": run.status, "mode": run.mode,
        "optimizer": run.optimizer, "combiner": run.combiner,
        "rounds_planned": run.num_rounds_planned,
        "started_at": run.started_at, "finished_at": run.finished_at,
    }


def list_runs(s: Session) -> RunsPublic:
    runs = _summaries(s)
    return RunsPublic(data=runs, count=len(runs))


def run_detail(s: Session, run_id: str) -> RunDetailPublic:
    run = find_run(s, run_id)
    (summary,) = _summaries(s, run.id)
    events = repo.events_of(s, run.id)
    return RunDetailPublic(
        **summary.model_dump(exclude={"short_id"}),
        config=dict(run.config),
        error=run.error,
        flower_run_id=run.flower_run_id,
        out_dir=run.out_dir,
        events=[EventPublic.model_validate(e) for e in events],
        checkpoints=_checkpoints(s, run.id),
    )


def _checkpoints(s: Session, run_id: str) -> list[CheckpointPublic]:
    rows = s.execute(
        select(RoundRow.number, RoundRow.checkpoint_path, RoundRow.checkpoint_sha256)
        .where(
            RoundRow.run_id == run_id,
            RoundRow.status == "committed",
            RoundRow.checkpoint_path.is_not(None),
        )
        .order_by(RoundRow.number)
    ).all()
    return [
        CheckpointPublic(
            round_number=number,
            sha256=digest,
            url=checkpoint_url(run_id, number),
            available=_servable(path) is not None,
        )
        for number, path, digest in rows
    ]


def rounds(s: Session, run_id: str) -> RoundsPublic:
    run = find_run(s, run_id)
    data = [RoundPublic.model_validate(r) for r in repo.rounds_of(s, run.id)]
    return RoundsPublic(data=data, count=len(data))


def clients(s: Session, run_id: str) -> ClientsPublic:
    run = find_run(s, run_id)
    u = ClientUpdateRow
    counted = (u.run_id == run.id, _committed(u.run_id, u.round_number))
    rows = s.execute(
        select(
            u.node_id,
            func.max(u.partition_id),
            func.count(distinct(u.round_number)),
            func.max(u.num_examples),
            func.sum(case((u.accepted, 1), else_=0)),
            func.sum(case((u.accepted, 0), else_=1)),
            func.avg(u.offset_norm),
        )
        .where(*counted)
        .group_by(u.node_id)
        .order_by(func.min(u.partition_id), u.node_id)
    ).all()
    reasons: dict[str, list[RejectionPublic]] = {}
    for node_id, reason, count in s.execute(
        select(u.node_id, u.reason, func.count(u.id))
        .where(*counted, u.accepted.is_(False))
        .group_by(u.node_id, u.reason)
        .order_by(u.node_id, func.count(u.id).desc(), u.reason)
    ).all():
        reasons.setdefault(node_id, []).append(
            RejectionPublic(reason=reason or NO_REASON, count=count)
        )
    data = [
        ClientPublic(
            node_id=node_id, partition_id=partition, rounds_participated=n_rounds,
            num_examples=examples, accepted=accepted or 0, rejected=rejected or 0,
            rejections=reasons.get(node_id, []),
            mean_offset_norm=None if norm is None else float(norm),
        )
        for node_id, partition, n_rounds, examples, accepted, rejected, norm in rows
    ]
    return ClientsPublic(data=data, count=len(data))


def evaluations(s: Session, run_id: str) -> EvaluationsPublic:
    run = find_run(s, run_id)
    data = [EvaluationPublic.model_validate(e) for e in repo.committed_evaluations(s, run.id)]
    return EvaluationsPublic(data=data, count=len(data))


def _servable(path: str | None) -> Path | None:
    if not path or not path.endswith(CHECKPOINT_SUFFIX):
        return None
    file = Path(path)
    return file if file.is_absolute() and file.is_file() else None


def checkpoint_file(s: Session, run_id: str, number: int) -> Path:
    """The checkpoint of committed round ``number``, if its file is still there."""
    run = find_run(s, run_id)
    path = s.scalar(
        select(RoundRow.checkpoint_path).where(
            RoundRow.run_id == run.id, RoundRow.number == number, RoundRow.status == "committed"
        )
    )
    if (file := _servable(path)) is None:
        raise UnknownCheckpoint(f"run {run.id} has no checkpoint file for round {number}")
    return file
