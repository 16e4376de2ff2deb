"""Factories for Flower reply Messages, as a ClientApp would send them."""

from __future__ import annotations

import numpy as np
import torch
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

from client.packed import packed_record

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
    packed: bool = False,
) -> Message:
    """``packed``: the tensors in one packed Array, as our ClientApp sends them; else one
    Array per tensor, as a ClientApp written against Flower's API does."""
    record = _packed if packed else _per_tensor
    content = RecordDict({
        "arrays": record(arrays),
        "metrics": MetricRecord({"num-examples": examples, **(metrics or {})}),
    })
    if manifest is not None:
        content["manifest"] = ConfigRecord({"tensors": manifest})
    if fisher is not None:
        content["fisher"] = record(fisher)
    return _stamped(node, content)


def _per_tensor(arrays: dict[str, np.ndarray]) -> ArrayRecord:
    return ArrayRecord({k: Array(v) for k, v in arrays.items()})


def _packed(arrays: dict[str, np.ndarray]) -> ArrayRecord:
    return packed_record({k: torch.from_numpy(v) for k, v in arrays.items()})


def error_reply(node: int, reason: str) -> Message:
    sent = _stamped(node, RecordDict())
    return Message(Error(code=0, reason=reason), reply_to=sent)


def _stamped(node: int, content: RecordDict) -> Message:
    TaskIdentity.node_id = node  # Flower stamps the sender from the task's identity
    return Message(content, dst_node_id=node, message_type=MessageType.TRAIN)
