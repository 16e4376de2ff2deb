"""Factories for Flower reply Messages, as a ClientApp would send them."""

from __future__ import annotations

import numpy as np
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Error,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)
from flwr.supercore.task_identity import TaskIdentity

# Message() outside a running app needs an identity to stamp on it.
TaskIdentity.run_id = 1
TaskIdentity.node_id = 1
TaskIdentity.task_id = 1


def reply(
    arrays: dict[str, np.ndarray],
    *,
    examples: float = 10,
    node: int = 1,
    metrics: dict[str, float] | None = None,
    manifest: list[str] | None = None,
    fisher: dict[str, np.ndarray] | None = None,
) -> Message:
    content = RecordDict({
        "arrays": ArrayRecord({k: Array(v) for k, v in arrays.items()}),
        "metrics": MetricRecord({"num-examples": examples, **(metrics or {})}),
    })
    if manifest is not None:
        content["manifest"] = ConfigRecord({"tensors": manifest})
    if fisher is not None:
        content["fisher"] = ArrayRecord({k: Array(v) for k, v in fisher.items()})
    return _stamped(node, content)


def error_reply(node: int, reason: str) -> Message:
    sent = _stamped(node, RecordDict())
    return Message(Error(code=0, reason=reason), reply_to=sent)


def _stamped(node: int, content: RecordDict) -> Message:
    TaskIdentity.node_id = node  # Flower stamps the sender from the task's identity
    return Message(content, dst_node_id=node, message_type=MessageType.TRAIN)
