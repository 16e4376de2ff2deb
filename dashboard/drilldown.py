"""Drill-down reads: one client over the rounds, one round's verdicts, runs compared,
and the per-round metrics table the downloads write. Same rules as ``queries``: only
committed rounds count, and values come back as ``schemas``, never ORM rows.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Select, select
from sqlalchemy.orm import Session

from coordinator.store.models import ClientUpdateRow, RoundRow
from dashboard.queries import (
    MAX_ROUND,
    UnknownClient,
    committed,
    evaluations,
    find_run,
    rounds,
    run_detail,
)
from dashboard.schemas import (
    ClientDetailPublic,
    ClientRoundPublic,
    ComparisonPublic,
    RoundDetailPublic,
    RoundPublic,
)


def _client_round(u: ClientUpdateRow) -> ClientRoundPublic:
    return ClientRoundPublic.model_validate(u)


def _committed_updates(s: Session, run_id: str) -> Select[tuple[ClientUpdateRow]]:
    u = ClientUpdateRow
    return (
        select(u)
        .where(u.run_id == run_id, committed(u.run_id, u.round_number))
        .order_by(u.round_number, u.partition_id, u.node_id)
    )


def client_detail(s: Session, run_id: str, node_id: str) -> ClientDetailPublic:
    """One node's update in every committed round: metrics, offset norm, verdict, reason."""
    run = find_run(s, run_id)
    rows = s.scalars(_committed_updates(s, run.id).where(ClientUpdateRow.node_id == node_id))
    updates = [_client_round(u) for u in rows]
    if not updates:
        raise UnknownClient(f"run {run.id} has no committed update from node {node_id!r}")
    partition = next((u.partition_id for u in updates if u.partition_id is not None), None)
    return ClientDetailPublic(
        node_id=node_id, partition_id=partition, label=updates[0].label, rounds=updates
    )


def round_detail(s: Session, run_id: str, number: int) -> RoundDetailPublic:
    """A round: its timings, and which updates were merged or dropped and why."""
    run = find_run(s, run_id)
    if not 0 <= number <= MAX_ROUND:
        raise UnknownClient(f"run {run.id} has no round {number}")
    row = s.scalars(
        select(RoundRow).where(RoundRow.run_id == run.id, RoundRow.number == number)
    ).one_or_none()
    if row is None:
        raise UnknownClient(f"run {run.id} has no round {number}")
    updates = (
        [_client_round(u) for u in s.scalars(
            _committed_updates(s, run.id).where(ClientUpdateRow.round_number == number))]
        if row.status == "committed" else []
    )
    evals = [e for e in evaluations(s, run.id).data if e.round_number == number]
    return RoundDetailPublic(
        round=RoundPublic.model_validate(row), updates=updates, evaluations=evals
    )


def compare(s: Session, run_ids: list[str]) -> ComparisonPublic:
    """Runs side by side: their details and which config keys differ between them."""
    runs = [run_detail(s, rid) for rid in dict.fromkeys(run_ids)]
    keys = sorted({k for r in runs for k in r.config})
    missing = object()
    differing = [
        k for k in keys if len({repr(r.config.get(k, missing)) for r in runs}) > 1
    ]
    return ComparisonPublic(runs=runs, config_keys=keys, differing_keys=differing)


METRIC_COLUMNS = ("round", "status", "started_at", "finished_at", "duration_s", "send_s",
                  "wait_s", "merge_s", "evaluate_s", "num_clients", "num_accepted",
                  "num_rejected")


def metrics_table(s: Session, run_id: str) -> list[dict[str, Any]]:
    """One row per committed round (and round 0): timings, round metrics, evaluations."""
    run = find_run(s, run_id)
    by_round: dict[int, dict[str, Any]] = {}
    for r in rounds(s, run.id).data:
        if r.status != "committed":
            continue
        row: dict[str, Any] = {
            "round": r.number, "status": r.status, "started_at": _iso(r.started_at),
            "finished_at": _iso(r.finished_at), "duration_s": r.duration_s,
            "send_s": r.send_s, "wait_s": r.wait_s, "merge_s": r.merge_s,
            "evaluate_s": r.evaluate_s, "num_clients": r.num_clients,
            "num_accepted": r.num_accepted, "num_rejected": r.num_rejected,
        }
        row.update({k: v for k, v in (r.metrics or {}).items() if _scalar(v)})
        by_round[r.number] = row
    for e in evaluations(s, run.id).data:
        row = by_round.setdefault(e.round_number, {"round": e.round_number})
        row[f"{e.kind}-accuracy"] = e.accuracy
        row[f"{e.kind}-loss"] = e.loss
        row.update({f"{e.kind}-{k}": v for k, v in e.metrics.items() if _scalar(v)})
    return [by_round[n] for n in sorted(by_round)]


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def _scalar(value: object) -> bool:
    return isinstance(value, str | int | float | bool) or value is None
