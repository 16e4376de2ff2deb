"""Validation, in one place: from a client's reply Message to a ``ClientUpdate`` that may be
merged, without copying payloads (each tensor is a view of Flower's bytes:
``coordinator/payloads.py``).

``ReplyValidator`` decides accept or reject for every combiner. Per reply
(``decode_reply``): the records, tensor names, shapes and dtypes, the examples count and
its cap, finite values and the norm bound (one read of the offset, whose norm the
combiner reuses for clipping). Per round (``ReplyValidator.screen``): the bound relative
to the round's median norm. A failed check raises ``UpdateRejected`` (per reply) or is
returned as a reason (per round); the round loop records it. Combiners only combine.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord

from aggregation import ClientUpdate, Params
from aggregation.combiners import reference_norm, update_norm
from client.task import FISHER_KEY, MANIFEST_KEY, METRICS_KEY, NUM_EXAMPLES, OFFSET_KEY
from coordinator.low_rank import LowRankError, LowRankReplies
from coordinator.payloads import PayloadError, record_tensors

PARTITION_ID = "partition-id"
STORE_INT_MAX = 2**31 - 1  # the run store's integer columns (partition id, example counts)


class UpdateRejected(ValueError):
    """A reply that must not be merged; ``str(exc)`` is the reason that gets recorded."""


@dataclass(frozen=True)
class UpdateLimits:
    max_examples: int = 1_000_000
    max_update_norm: float = 0.0  # 0 = unbounded
    max_norm_ratio: float = 0.0  # 0 = off; else reject above this x the round's median norm
    norm_ratio_byzantine: int = 0  # f: the reference resists f hostile norms (0: median)


@dataclass(frozen=True)
class DecodedReply:
    update: ClientUpdate
    metrics: dict[str, float]

    @property
    def norm(self) -> float:
        assert self.update.norm is not None  # measured unless decoded with values=False
        return self.update.norm


class ReplyValidator:
    """Accepts or rejects a round's replies, whatever the combiner.

    ``full_only``: the combiner needs every tensor of the model from each client (Krum's
    distances are over the whole model), so a partial update is rejected here."""

    def __init__(self, limits: UpdateLimits | None = None, *, full_only: bool = False,
                 low_rank: LowRankReplies | None = None) -> None:
        self.limits = limits or UpdateLimits()
        self.full_only = full_only
        self.low_rank = low_rank  # replies send factors; their offset is computed here

    @property
    def needs_whole_round(self) -> bool:
        """Whether ``screen`` needs every offset of the round before any is merged."""
        return self.limits.max_norm_ratio > 0

    def check(
        self, node_id: str, msg: Message, template: Params, *, values: bool = True
    ) -> DecodedReply:
        """One reply, decoded and checked; raises ``UpdateRejected`` with the reason.
        ``values=False``: the offset's values are left to the caller (its norm is None),
        which checks them with ``judge`` as it reads them (``aggregation/streaming.py``)."""
        d = decode_reply(msg, template, self.limits, node_id=node_id, values=values,
                         low_rank=self.low_rank)
        if self.full_only and d.update.offset.keys() != template.keys():
            raise UpdateRejected("partial update: this combiner needs every tensor")
        return d

    def judge(self, norm: float) -> str | None:
        """Why an offset of this norm must not be merged (non-finite, over
        max-update-norm), or None."""
        return value_problem(norm, self.limits.max_update_norm)

    def screen(self, norms: Mapping[str, float]) -> dict[str, str]:
        """The round-level verdicts: node id -> reason, for the offsets (given by their
        norms) whose norm exceeds max-norm-ratio x the round's reference norm
        (``reference_norm``)."""
        ratio = self.limits.max_norm_ratio
        if ratio <= 0 or not norms:
            return {}
        f = self.limits.norm_ratio_byzantine
        ref = reference_norm(list(norms.values()), f)
        what = "median" if f == 0 else f"reference (f={f})"
        return {
            node: (f"offset norm {norm:.4g} exceeds max-norm-ratio {ratio} x the round's "
                   f"{what} {ref:.4g}")
            for node, norm in norms.items() if norm > ratio * ref
        }


def value_problem(norm: float, max_norm: float) -> str | None:
    """Why an offset of this norm must not be merged, or None."""
    if not math.isfinite(norm):
        return "offset has non-finite values (NaN or Inf)"
    if max_norm > 0 and norm > max_norm:
        return f"offset norm {norm:.4g} exceeds max-update-norm {max_norm}"
    return None


def decode_reply(
    msg: Message, template: Params, limits: UpdateLimits, *, node_id: str | None = None,
    values: bool = True, low_rank: LowRankReplies | None = None,
) -> DecodedReply:
    """Validate one reply against the model (``template``) and the limits. ``node_id``:
    the node the request went to (the grid knows it); by default the reply's sender.
    ``values=False``: everything but the offset's values (finite, norm bound) is checked;
    the update's norm is then None. ``low_rank``: the reply holds factors (checked against
    their own template), turned into the offset of theta's tensors before the value
    checks; with ``values=False`` the update's offset stays the factors as sent."""
    if msg.has_error():
        raise UpdateRejected(f"client error: {msg.error.reason}")
    content = msg.content
    metrics = _record(content, METRICS_KEY, MetricRecord)
    record = _record(content, OFFSET_KEY, ArrayRecord)

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

    sent = template if low_rank is None else low_rank.template
    expected = _expected_tensors(content, sent)
    arrays = _tensors(record, "offset")  # packed or not: the names are in the payload
    unknown = sorted(set(arrays) - set(sent))
    if unknown:
        raise UpdateRejected(f"unknown tensor(s) {unknown}")
    missing = sorted(expected - set(arrays))
    if missing:
        raise UpdateRejected(f"missing tensor(s) {missing}")
    offset = _checked_tensors(arrays, sent, "offset")
    if low_rank is not None:
        if FISHER_KEY in content:
            raise UpdateRejected("fisher: not with a low-rank update")
        try:
            if values:
                offset = low_rank.offset(offset)
            else:  # kept as factors, which the caller reads with low_rank.factors
                low_rank.factors(offset)  # a factor without its partner: refused here
        except LowRankError as exc:
            raise UpdateRejected(f"offset: {exc}") from None

    fisher = None
    if FISHER_KEY in content:
        fisher = _checked_tensors(
            _tensors(_record(content, FISHER_KEY, ArrayRecord), "fisher"), template, "fisher")
        if set(fisher) != set(offset):
            raise UpdateRejected("fisher names other tensors than the offset")
        _check_fisher_values(fisher)
    norm = None
    if values:  # one pass for both checks: any NaN/Inf makes the norm non-finite
        norm = update_norm(offset)
        reason = value_problem(norm, limits.max_update_norm)
        if reason is not None:
            raise UpdateRejected(reason)

    client_id = str(msg.metadata.src_node_id) if node_id is None else node_id
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


def _tensors(record: ArrayRecord, what: str) -> Params:
    """The record's tensors, packed or one Array each (coordinator/payloads.py)."""
    try:
        return record_tensors(record)
    except PayloadError as exc:
        raise UpdateRejected(f"{what}: {exc}") from None


def _checked_tensors(tensors: Params, template: Params, what: str) -> Params:
    out: Params = {}
    for name, t in tensors.items():
        ref = template.get(name)
        if ref is None:
            raise UpdateRejected(f"{what}: unknown tensor {name!r}")
        if t.dtype != ref.dtype:
            raise UpdateRejected(f"{what} {name!r}: dtype {t.dtype} != model's {ref.dtype}")
        if t.shape != ref.shape:
            raise UpdateRejected(
                f"{what} {name!r}: shape {tuple(t.shape)} != model's {tuple(ref.shape)}"
            )
        out[name] = t
    return out
