"""Runs written through ``coordinator.store.repo``, as the coordinator writes them."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy.orm import Session

from coordinator.store import EvaluationRecord, RoundRecord, UpdateRecord, repo
from coordinator.store.models import EvaluationRow

NODES = ("1111", "2222", "3333")


def create_run(
    s: Session, *, name: str = "digits-adam", rounds_planned: int = 3, out_dir: str = "/tmp"
) -> str:
    run_id = repo.create_run(
        s, name=name, config={"num-server-rounds": rounds_planned, "optimizer": "adam"},
        mode="global", optimizer="adam", combiner="mean",
        num_rounds_planned=rounds_planned, out_dir=out_dir,
    )
    s.add(EvaluationRow(run_id=run_id, round_number=0, kind="central", loss=2.3,
                        accuracy=0.1, num_examples=360, metrics={}))
    return run_id


def write_checkpoint(directory: Path, number: int) -> tuple[str, str]:
    path = directory / f"round-{number:04d}.safetensors"
    data = f"not really safetensors, round {number}".encode()
    path.write_bytes(data)
    return str(path), hashlib.sha256(data).hexdigest()


def round_record(
    number: int, *, checkpoint: tuple[str, str] | None = None, reject: str | None = None
) -> RoundRecord:
    """Round ``number``: three nodes (the last one rejected with ``reject`` if given)."""
    t0 = datetime(2025, 1, 1, tzinfo=UTC) + timedelta(minutes=number)
    updates = tuple(
        UpdateRecord(
            node_id=node, accepted=not (reject and i == len(NODES) - 1),
            reason=reject if reject and i == len(NODES) - 1 else None,
            partition_id=i, num_examples=100 + 10 * i, offset_norm=1.0 + i,
        )
        for i, node in enumerate(NODES)
    )
    acc = min(0.95, 0.3 + 0.2 * number)
    return RoundRecord(
        number=number, started_at=t0, finished_at=t0 + timedelta(seconds=4),
        send_s=0.5, wait_s=2.0, merge_s=0.25, evaluate_s=0.75, metrics={"train-loss": 1.0},
        checkpoint_path=None if checkpoint is None else checkpoint[0],
        checkpoint_sha256=None if checkpoint is None else checkpoint[1],
        updates=updates,
        evaluations=(
            EvaluationRecord("central", 2.0 / (number + 1), acc, 360),
            EvaluationRecord("federated", 2.2 / (number + 1), acc - 0.05, 300),
        ),
    )


def commit_round(s: Session, run_id: str, record: RoundRecord) -> None:
    repo.start_round(s, run_id, record.number, record.started_at)
    repo.commit_round(s, run_id, record)
