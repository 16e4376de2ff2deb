"""What the dashboard answers: one pydantic shape per thing, shared by the JSON and the pages."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, computed_field


class _Out(BaseModel):
    model_config = ConfigDict(from_attributes=True, frozen=True)


class RunPublic(_Out):
    """One line of the runs list."""

    id: str
    name: str
    status: str
    mode: str
    optimizer: str
    combiner: str
    num_clients: int  # distinct nodes that sent an update
    rounds_done: int  # committed rounds
    rounds_planned: int
    best_central_accuracy: float | None
    started_at: datetime
    finished_at: datetime | None

    @computed_field  # type: ignore[prop-decorator]
    @property
    def short_id(self) -> str:
        return self.id[:8]


class RunsPublic(_Out):
    data: list[RunPublic]
    count: int


class EventPublic(_Out):
    at: datetime
    kind: str
    message: str


class CheckpointPublic(_Out):
    round_number: int
    sha256: str | None
    url: str  # the download route; it answers 404 if the file is gone
    available: bool  # the file exists now


class RunDetailPublic(RunPublic):
    config: dict[str, Any]
    error: str | None
    flower_run_id: str | None
    out_dir: str
    events: list[EventPublic]
    checkpoints: list[CheckpointPublic]


class RoundPublic(_Out):
    number: int
    status: str
    attempts: int
    started_at: datetime
    finished_at: datetime | None
    send_s: float | None
    wait_s: float | None
    merge_s: float | None
    evaluate_s: float | None
    num_clients: int | None
    num_accepted: int | None
    num_rejected: int | None
    metrics: dict[str, Any] | None
    checkpoint_sha256: str | None

    @computed_field  # type: ignore[prop-decorator]
    @property
    def duration_s(self) -> float | None:
        if self.finished_at is None:
            return None
        return (self.finished_at - self.started_at).total_seconds()


class RoundsPublic(_Out):
    data: list[RoundPublic]
    count: int


class RejectionPublic(_Out):
    reason: str
    count: int


class ClientPublic(_Out):
    """One node over the whole run."""

    node_id: str
    partition_id: int | None
    rounds_participated: int
    num_examples: int | None  # the most it reported in a round
    accepted: int
    rejected: int
    rejections: list[RejectionPublic]
    mean_offset_norm: float | None


class ClientsPublic(_Out):
    data: list[ClientPublic]
    count: int


class EvaluationPublic(_Out):
    round_number: int  # 0 = the initial model
    kind: str  # central | federated | personalized
    loss: float | None
    accuracy: float | None
    num_examples: int | None
    metrics: dict[str, Any]


class EvaluationsPublic(_Out):
    data: list[EvaluationPublic]
    count: int
