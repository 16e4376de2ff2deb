"""From a client's reply Message to a validated ``ClientUpdate``, without copying payloads
(each tensor is a view of Flower's bytes: ``coordinator/payloads.py``). Every check runs
before the update can touch the accumulator; a failed check raises ``UpdateRejected``
with the reason, which the strategy records.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord

from aggregation import ClientUpdate, Params
from aggregation.combiners import refusal, update_norm
from client.task import FISHER_KEY, MANIFEST_KEY, METRICS_KEY, NUM_EXAMPLES, OFFSET_KEY
from coordinator.payloads import PayloadError, tensor_view

PARTITION_ID = "partition-id"
STORE_INT_MAX = 2**31 - 1  # the run store's integer columns (partition id, example counts)


class UpdateRejected(ValueError):
    """A reply that must not be merged; ``str(exc)`` is the reason that gets recorded."""


@dataclass(frozen=True)
class UpdateLimits:
    max_examples: int = 1_000_000
    max_update_norm: float = 0.0  # 0 = unbounded


@dataclass(frozen=True)
class DecodedReply:
    update: ClientUpdate
    metrics: dict[str, float]

    @property
    def norm(self) -> float:
        """The offset's norm, NaN when it was not checked here."""
        return math.nan if self.update.norm is None else self.update.norm


def decode_reply(
    msg: Message, template: Params, limits: UpdateLimits, *, check_values: bool = True
) -> DecodedReply:
    """Validate one reply against the model (``template``) and the limits.

    ``check_values=False`` skips the offset's finite-values and norm checks (and leaves
    ``norm`` NaN) for a combiner that makes them itself in the same read that merges the
    offset (``OffsetCombiner.guards_values``): a second full read of every offset would
    cost as much as the merge."""
    if msg.has_error():
        raise UpdateRejected(f"client error: {msg.error.reason}")
    content = msg.content
    metrics = _record(content, METRICS_KEY, MetricRecord)
    arrays = _record(content, OFFSET_KEY, ArrayRecord)

    raw = metrics.get(NUM_EXAMPLES)
    if raw is None:
        raise UpdateRejected(f"missing metric {NUM_EXAMPLES!r}")
    if not isinstance(raw, int | float):
        raise UpdateRejected(f"{NUM_EXAMPLES} must be a number, got {raw!r}")
    examples = float(raw)
    if not math.isfinite(examples) or examples <= 0:
        raise UpdateRejected(f"{NUM_EXAMPLES} must be > 0, got {raw}")
    if examples > limits.max_examples:
        raise UpdateRejected(f"{NUM_EXAMPLES}={raw} exceeds the cap {limits.max_examples}")

    expected = _expected_tensors(content, template)
    unknown = sorted(set(arrays) - set(template))
    if unknown:
        raise UpdateRejected(f"unknown tensor(s) {unknown}")
    missing = sorted(expected - set(arrays))
    if missing:
        raise UpdateRejected(f"missing tensor(s) {missing}")
    offset = _checked_tensors(arrays, template, "offset")

    fisher = None
    if FISHER_KEY in content:
        fisher = _checked_tensors(_record(content, FISHER_KEY, ArrayRecord), template, "fisher")
        if set(fisher) != set(offset):
            raise UpdateRejected("fisher names other tensors than the offset")
        _check_fisher_values(fisher)
    norm = None
    if check_values:
        # One pass for both checks: any NaN/Inf makes the norm non-finite.
        norm = update_norm(offset)
        reason = refusal(norm, limits.max_update_norm)
        if reason is not None:
            raise UpdateRejected(reason)

    client_id = str(msg.metadata.src_node_id)
    plain = numeric(metrics)
    if (problem := _metrics_problem(plain)) is not None:
        raise UpdateRejected(problem)
    return DecodedReply(ClientUpdate(offset, examples, fisher, client_id, norm), plain)


def numeric(metrics: MetricRecord) -> dict[str, float]:
    """The record's scalar metrics as floats; list-valued ones are left out."""
    return {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))}


def reply_metrics(msg: Message) -> dict[str, float] | None:
    """An evaluate reply's scalar metrics, or None for an error reply or one without a
    MetricRecord under ``METRICS_KEY``."""
    if msg.has_error() or not isinstance(msg.content.get(METRICS_KEY), MetricRecord):
        return None
    metrics = numeric(msg.content[METRICS_KEY])
    return None if _metrics_problem(metrics) is not None else metrics


def _metrics_problem(metrics: dict[str, float]) -> str | None:
    """Why these metrics cannot be recorded as they are, or None: the partition id and
    the example count must be integers the run store can hold."""
    for key in (PARTITION_ID, NUM_EXAMPLES):
        value = metrics.get(key)
        if value is None:
            continue
        if not (math.isfinite(value) and value == int(value) and 0 <= value <= STORE_INT_MAX):
            return f"metric {key} must be an integer in 0..{STORE_INT_MAX}, got {value}"
    return None


def _check_fisher_values(fisher: Params) -> None:
    """Finite and >= 0, in one read per tensor (min and max together)."""
    for f in fisher.values():
        if f.numel() == 0:
            continue
        lo, hi = (float(x) for x in torch.aminmax(f))
        if math.isnan(lo) or math.isinf(lo) or math.isinf(hi):
            raise UpdateRejected("fisher has non-finite values (NaN or Inf)")
        if lo < 0:
            raise UpdateRejected("fisher has negative entries")


def _record(content: Mapping, key: str, kind: type) -> object:
    if key not in content:
        raise UpdateRejected(f"reply has no {key!r} record")
    rec = content[key]
    if not isinstance(rec, kind):
        raise UpdateRejected(f"reply record {key!r} is a {type(rec).__name__}, not {kind.__name__}")
    return rec


def _expected_tensors(content: Mapping, template: Params) -> set[str]:
    """All tensors, unless the client declares a partial update in its manifest."""
    if MANIFEST_KEY not in content:
        return set(template)
    manifest = _record(content, MANIFEST_KEY, ConfigRecord)
    names = manifest.get("tensors")
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise UpdateRejected("manifest 'tensors' must be a non-empty list of tensor names")
    unknown = sorted(set(names) - set(template))
    if unknown:
        raise UpdateRejected(f"manifest names unknown tensor(s) {unknown}")
    return set(names)


def _checked_tensors(arrays: ArrayRecord, template: Params, what: str) -> Params:
    out: Params = {}
    for name, array in arrays.items():
        ref = template.get(name)
        if ref is None:
            raise UpdateRejected(f"{what}: unknown tensor {name!r}")
        try:
            t = tensor_view(array, name)
        except PayloadError as exc:
            raise UpdateRejected(f"{what}: {exc}") from None
        if t.dtype != ref.dtype:
            raise UpdateRejected(f"{what} {name!r}: dtype {t.dtype} != model's {ref.dtype}")
        if t.shape != ref.shape:
            raise UpdateRejected(
                f"{what} {name!r}: shape {tuple(t.shape)} != model's {tuple(ref.shape)}"
            )
        out[name] = t
    return out
