"""What the coordinator hands to the store: plain frozen values, never ORM objects.

The coordinator fills these while a round runs and passes them to
``repo.commit_round``; the store alone turns them into rows, so no session or
lazy-loading object leaks into the strategy.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

RUN_STATUSES = ("running", "completed", "failed", "interrupted")
ROUND_STATUSES = ("running", "committed", "aborted")
EVALUATION_KINDS = ("central", "federated", "personalized")
EVENT_KINDS = ("resumed", "round-aborted", "round-timeout", "error", "info", "privacy-budget")


@dataclass(frozen=True)
class UpdateRecord:
    """One client's reply in a round, merged or rejected (then ``reason`` says why)."""

    node_id: str  # Flower node ids are uint64: text, so PostgreSQL's int8 never overflows
    accepted: bool
    reason: str | None = None
    partition_id: int | None = None
    num_examples: int | None = None
    offset_norm: float | None = None
    train_seconds: float | None = None
    metrics: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class EvaluationRecord:
    kind: str  # one of EVALUATION_KINDS
    loss: float | None
    accuracy: float | None
    num_examples: int | None = None
    metrics: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in EVALUATION_KINDS:
            raise ValueError(f"evaluation kind {self.kind!r} is not one of {EVALUATION_KINDS}")


@dataclass(frozen=True)
class RoundRecord:
    """A finished round: its timings, checkpoint, every client's update and evaluations."""

    number: int
    started_at: datetime
    finished_at: datetime
    send_s: float
    wait_s: float
    merge_s: float
    evaluate_s: float
    metrics: dict[str, Any]  # aggregate train metrics
    checkpoint_path: str | None
    checkpoint_sha256: str | None
    updates: tuple[UpdateRecord, ...]
    evaluations: tuple[EvaluationRecord, ...]
    # federated-evaluation "folded": the clients' evaluations of the theta this round
    # started from, carried by its train replies; recorded under the round before
    previous_evaluations: tuple[EvaluationRecord, ...] = ()
