"""Every read the dashboard makes, in one place: pages and JSON both call these.

Each function takes a ``Session`` and returns ``schemas`` values, never ORM rows, so a
template and an API response are built from the same object. Client updates and
evaluations count only for committed rounds (and round 0, the initial model): a round
discarded by a resume is history in ``rounds``, not in the totals or the plots.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

from sqlalchemy import ColumnElement, Select, case, distinct, exists, func, or_, select
from sqlalchemy.orm import InstrumentedAttribute, Session

from coordinator.store import repo
from coordinator.store.models import (
    ClientUpdateRow,
    EvaluationRow,
    RoundRow,
    RunEventRow,
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
    RunTimedAccuracyPublic,
    TimedAccuracyPublic,
    WorkerPublic,
)

CHECKPOINT_SUFFIX = ".safetensors"
MAX_ROUND = 2**31 - 1  # rounds.number is a 32-bit INTEGER column
NO_REASON = "(no reason recorded)"


class UnknownRun(LookupError):
    """No run has this id (or the prefix matches several)."""


class UnknownCheckpoint(LookupError):
    """The round has no checkpoint, or its file is gone."""


class UnknownClient(LookupError):
    """The run has no update from this node (or no such round)."""


SORT_KEYS = ("started_at", "name", "status", "rounds_done", "best_central_accuracy",
             "num_clients")


@dataclass(frozen=True)
class RunQuery:
    """The runs list's search, filters, order and page (every filter optional)."""

    q: str = ""  # in the name, id, tags or notes
    status: str = ""
    task: str = ""
    optimizer: str = ""
    combiner: str = ""
    since: date | None = None  # started on or after
    until: date | None = None  # started on or before
    sort: str = "started_at"
    desc: bool = True
    page: int = 1
    per_page: int = 25

    def __post_init__(self) -> None:
        if self.sort not in SORT_KEYS:
            raise ValueError(f"sort: {self.sort!r} is not one of {', '.join(SORT_KEYS)}")
        if self.page < 1 or not 1 <= self.per_page <= 500:
            raise ValueError("page must be >= 1 and per_page within 1..500")

    def matches(self, run: RunPublic) -> bool:
        text = " ".join([run.name, run.id, *run.tags, run.notes]).lower()
        started = run.started_at.date()
        return (
            (not self.q or self.q.lower() in text)
            and (not self.status or run.status == self.status)
            and (not self.task or self.task.lower() in run.task.lower())
            and (not self.optimizer or run.optimizer == self.optimizer)
            and (not self.combiner or run.combiner == self.combiner)
            and (self.since is None or started >= self.since)
            and (self.until is None or started <= self.until)
        )


def checkpoint_url(run_id: str, number: int) -> str:
    return f"/runs/{run_id}/checkpoints/{number}{CHECKPOINT_SUFFIX}"


def committed(run_id: Any, number: InstrumentedAttribute[int]) -> ColumnElement[bool]:
    """The row's round (``run_id``, ``number``) is committed."""
    return exists().where(
        RoundRow.run_id == run_id, RoundRow.number == number, RoundRow.status == "committed"
    )


def _counted_evaluation() -> ColumnElement[bool]:
    return or_(
        EvaluationRow.round_number == 0,
        committed(EvaluationRow.run_id, EvaluationRow.round_number),
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
        .where(committed(ClientUpdateRow.run_id, ClientUpdateRow.round_number),
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
        "task": run_task(run.config), "tags": list(run.tags or []), "notes": run.notes or "",
    }


def run_task(config: dict[str, Any]) -> str:
    """What a run learns: its config's ``task``, else ``dataset``/``model``."""
    if task := config.get("task"):
        return str(task)
    return "/".join(str(config[k]) for k in ("dataset", "model") if config.get(k)) or "–"


def _workers(s: Session, run_ids: list[str]) -> dict[str, list[WorkerPublic]]:
    """The nodes each of ``run_ids`` has merged updates from."""
    if not run_ids:
        return {}
    u = ClientUpdateRow
    out: dict[str, list[WorkerPublic]] = {}
    for run_id, node_id, partition in s.execute(
        select(u.run_id, u.node_id, func.max(u.partition_id))
        .where(u.run_id.in_(run_ids))
        .group_by(u.run_id, u.node_id)
        .order_by(u.run_id, func.max(u.partition_id), u.node_id)
    ).all():
        out.setdefault(run_id, []).append(WorkerPublic(node_id=node_id, partition_id=partition))
    return out


def filter_choices(s: Session) -> dict[str, list[str]]:
    """The values the runs list can be filtered by: every status, optimizer, combiner."""
    return {
        name: list(s.scalars(select(column).distinct().order_by(column)))
        for name, column in (("status", RunRow.status), ("optimizer", RunRow.optimizer),
                             ("combiner", RunRow.combiner))
    }


def list_runs(s: Session, query: RunQuery | None = None) -> RunsPublic:
    """The runs that match ``query``, sorted, one page of them; running runs with workers."""
    query = query or RunQuery(per_page=500)
    runs = [r for r in _summaries(s) if query.matches(r)]

    def key(run: RunPublic) -> tuple[bool, Any]:
        value = getattr(run, query.sort)
        missing = value is None  # None last, whichever the order
        return (missing != query.desc, value if not missing else 0)

    runs.sort(key=key, reverse=query.desc)
    pages = max(1, math.ceil(len(runs) / query.per_page))
    page = min(query.page, pages)
    shown = runs[(page - 1) * query.per_page : page * query.per_page]
    workers = _workers(s, [r.id for r in shown if r.status == "running"])
    data = [r.model_copy(update={"workers": workers.get(r.id, [])}) for r in shown]
    return RunsPublic(data=data, count=len(data), total=len(runs), page=page, pages=pages)


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
    counted = (u.run_id == run.id, committed(u.run_id, u.round_number))
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


def accuracy_over_time(s: Session, run_id: str) -> list[TimedAccuracyPublic]:
    """Central accuracy against wall-clock seconds since the run started, for sync and
    async runs alike (a resumed run's time includes the time it was down)."""
    run = find_run(s, run_id)
    finished = {r.number: r.finished_at for r in repo.rounds_of(s, run.id)
                if r.status == "committed"}
    out = []
    for e in repo.committed_evaluations(s, run.id):
        at = run.started_at if e.round_number == 0 else finished.get(e.round_number)
        if e.kind != "central" or e.accuracy is None or at is None:
            continue
        seconds = max((at - run.started_at).total_seconds(), 0.0)
        out.append(TimedAccuracyPublic(round_number=e.round_number, seconds=seconds,
                                       accuracy=e.accuracy))
    return out


def accuracy_over_time_of(s: Session, run_ids: list[str]) -> list[RunTimedAccuracyPublic]:
    """Each run's central accuracy against seconds since it started, in the order given
    (a run named twice, by full or short id, once)."""
    runs = {run.id: run for run in (find_run(s, rid) for rid in run_ids)}
    return [RunTimedAccuracyPublic(run_id=run.id, label=f"{run.id[:8]} {run.name}",
                                   points=accuracy_over_time(s, run.id))
            for run in runs.values()]


def step_unit(config: dict[str, Any]) -> str:
    """What a run's steps are called: model versions in async mode, else rounds."""
    return "version" if config.get("merge") == "async" else "round"


def _servable(path: str | None) -> Path | None:
    if not path or not path.endswith(CHECKPOINT_SUFFIX):
        return None
    file = Path(path)
    return file if file.is_absolute() and file.is_file() else None


def checkpoint_file(s: Session, run_id: str, number: int) -> Path:
    """The checkpoint of committed round ``number``, if its file is still there."""
    run = find_run(s, run_id)
    if not 0 <= number <= MAX_ROUND:  # no such round; the driver could not even bind it
        raise UnknownCheckpoint(f"run {run.id} has no round {number}")
    path = s.scalar(
        select(RoundRow.checkpoint_path).where(
            RoundRow.run_id == run.id, RoundRow.number == number, RoundRow.status == "committed"
        )
    )
    if (file := _servable(path)) is None:
        raise UnknownCheckpoint(f"run {run.id} has no checkpoint file for round {number}")
    return file



def store_stamp(s: Session) -> tuple[Any, ...]:
    """The run store's state, in one read of small aggregates: it changes with every write
    the coordinator and the CLI make (a run created, finished or resumed; a round opened,
    restarted, committed or aborted; an update, evaluation or event added), so an answer
    computed under a stamp stays right while the stamp does (dashboard/cache.py)."""
    def one(*columns: Any) -> tuple[Any, ...]:
        return tuple(s.execute(select(*columns)).one())

    return (
        *one(func.count(RunRow.id), func.max(RunRow.started_at), func.max(RunRow.finished_at)),
        *one(func.max(RoundRow.id), func.max(RoundRow.started_at), func.sum(RoundRow.attempts),
             func.count(case((RoundRow.status == "committed", 1))),
             func.count(case((RoundRow.status == "aborted", 1)))),
        *one(func.max(EvaluationRow.id), func.count(EvaluationRow.id)),
        *one(func.max(ClientUpdateRow.id)),
        *one(func.max(RunEventRow.id)),
    )
