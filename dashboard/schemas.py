"""What the dashboard answers: one pydantic shape per thing, shared by the JSON and the pages."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, computed_field

MAX_TAGS = 20


def node_label(node_id: str, partition_id: int | None) -> str:
    """A short name for a node: its partition, else the end of its 19-digit id."""
    return f"p{partition_id}" if partition_id is not None else f"…{node_id[-6:]}"


class _Out(BaseModel):
    model_config = ConfigDict(from_attributes=True, frozen=True)


class WorkerPublic(_Out):
    """A node whose updates a run used."""

    node_id: str
    partition_id: int | None

    @computed_field  # type: ignore[prop-decorator]
    @property
    def label(self) -> str:
        return node_label(self.node_id, self.partition_id)


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
    task: str  # the run config's task (or dataset and model)
    tags: list[str] = []
    notes: str = ""
    workers: list[WorkerPublic] = []  # running runs: the nodes whose updates it merged

    @computed_field  # type: ignore[prop-decorator]
    @property
    def short_id(self) -> str:
        return self.id[:8]


class RunsPublic(_Out):
    data: list[RunPublic]
    count: int  # runs on this page
    total: int  # runs that match the filter
    page: int = 1
    pages: int = 1


class AnnotationsIn(BaseModel):
    """What the dashboard may write: a run's tags and notes."""

    model_config = ConfigDict(extra="forbid")

    tags: list[str] = Field(default_factory=list, max_length=MAX_TAGS)
    notes: str = Field(default="", max_length=10_000)

    def clean_tags(self) -> list[str]:
        """Stripped, non-empty, each once, in the order given; ValueError if one is too long."""
        seen: dict[str, None] = {}
        for tag in (t.strip() for t in self.tags):
            if len(tag) > 40:
                raise ValueError(f"tag {tag[:40]!r}… is longer than 40 characters")
            if tag:
                seen.setdefault(tag, None)
        return list(seen)


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


class ClientPublic(WorkerPublic):
    """One node over the whole run."""

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


class TimedAccuracyPublic(_Out):
    """A central evaluation at wall-clock seconds since the run started (its round's or
    version's commit; 0 for the initial model)."""

    round_number: int
    seconds: float
    accuracy: float


class RunTimedAccuracyPublic(_Out):
    """One run's central accuracy against seconds, a line of the compare page's overlay."""

    run_id: str
    label: str  # short id and name, as the compare page's table and legends show them
    points: list[TimedAccuracyPublic]


class EvaluationsPublic(_Out):
    data: list[EvaluationPublic]
    count: int


class ClientRoundPublic(_Out):
    """One node's update in one committed round."""

    round_number: int
    node_id: str
    partition_id: int | None
    accepted: bool
    reason: str | None
    offset_norm: float | None
    num_examples: int | None
    train_seconds: float | None
    metrics: dict[str, Any]

    @computed_field  # type: ignore[prop-decorator]
    @property
    def label(self) -> str:
        return node_label(self.node_id, self.partition_id)


class ClientDetailPublic(_Out):
    node_id: str
    partition_id: int | None
    label: str
    rounds: list[ClientRoundPublic]


class RoundDetailPublic(_Out):
    round: RoundPublic
    updates: list[ClientRoundPublic]
    evaluations: list[EvaluationPublic]


class ComparisonPublic(_Out):
    runs: list[RunDetailPublic]
    config_keys: list[str]  # every key of any run's config, sorted
    differing_keys: list[str]  # keys whose values are not the same in every run
