"""One round's merge: ``Merge(state, replies) -> (state, MergeReport)``.

The algorithm is injected: a ``ReplyValidator`` accepts or rejects each reply, an
``OffsetCombiner`` combines the accepted offsets, a ``ServerOptimizer`` steps theta on the
objective's gradient. Replies stream in from the grid; each is decoded as zero-copy
tensor views, validated and handed to a streaming combiner one at a time (memory
O(model)), or, for a robust combiner or a bound relative to the round's median norm, held
until the round's last reply (O(K x model)). theta is stepped in place: the returned
state holds the same tensors, one round on.

The examples-weighted mean takes the single-pass path (``aggregation/streaming.py``):
the replies' headers are checked as they come, their values (finite, norm bound, clip)
in the same pass over cache-sized blocks that adds them, a group of replies at a time
(at most ``group_bytes`` of offsets held, so memory stays bounded whatever K).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from logging import INFO, WARNING
from typing import TYPE_CHECKING

from flwr.common import log

from aggregation import ClientUpdate, OffsetCombiner, Params, ServerOptimizer, ServerState
from aggregation import objective_gradient as gradient
from aggregation.combiners import CombinerError, CombineResult, WeightedMean
from aggregation.lora import LowRankSum
from aggregation.streaming import Checked, CheckedSum
from client.metrics import DP_EPSILON, NUM_CLIENTS, TRAIN_MEANS
from client.task import NUM_EXAMPLES
from coordinator.evaluation import weighted_means
from coordinator.grid import Reply
from coordinator.payloads import payload_bytes
from coordinator.replies import DecodedReply, ReplyValidator, UpdateRejected

if TYPE_CHECKING:
    from coordinator.privacy import PrivacyPlan


ROUND_NOT_MERGED = "round not merged: no robust rule could combine its valid updates"


@dataclass(frozen=True)
class ClientOutcome:
    """One reply's fate: merged, or not and why."""

    node_id: str
    accepted: bool
    reason: str | None = None
    num_examples: float | None = None
    offset_norm: float | None = None
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class MergeReport:
    round: int
    clients: tuple[ClientOutcome, ...]
    merge_s: float  # decoding, validation, combining and the optimizer step
    wait_s: float  # blocked on replies still in flight
    train_metrics: dict[str, float]
    diagnostics: dict[str, object]
    stepped: bool = True  # whether the optimizer stepped theta this round
    bytes_up: int = 0  # tensor bytes of the round's train replies, rejected ones included

    @property
    def accepted(self) -> int:
        return sum(c.accepted for c in self.clients)


class _Outcomes:
    """What became of each reply of a round, in arrival order."""

    def __init__(self, number: int) -> None:
        self.number = number
        self.by_node: dict[str, ClientOutcome] = {}
        self.bytes_up = 0

    def add(self, outcome: ClientOutcome, *, quiet: bool = False) -> None:
        self.by_node[outcome.node_id] = outcome
        if not outcome.accepted and not quiet:
            self._log(outcome.node_id, outcome.reason or "")

    def counted(self, replies: Iterable[Reply]) -> Iterator[Reply]:
        """The replies, their tensor bytes added to ``bytes_up`` as they pass."""
        for r in replies:
            self.bytes_up += payload_bytes(r.message)
            yield r
            del r  # not held while the next one is awaited

    def reject(self, node: str, reason: str, *, quiet: bool = False) -> None:
        """An accepted update turned out not to be merged after all (``quiet``: the
        caller logs the reason once for the round)."""
        self.add(replace(self.by_node[node], accepted=False, reason=reason), quiet=quiet)

    def accepted(self) -> list[str]:
        return [n for n, o in self.by_node.items() if o.accepted]

    def rejected(self) -> int:
        return sum(not o.accepted for o in self.by_node.values())

    def all(self) -> tuple[ClientOutcome, ...]:
        rejected = [o for o in self.by_node.values() if not o.accepted]
        return (*rejected, *(o for o in self.by_node.values() if o.accepted))

    def _log(self, node: str, reason: str) -> None:
        log(WARNING, "round %s: update from node %s not merged: %s", self.number, node, reason)


GROUP_BYTES = 512 * 2**20
"""The single-pass merge adds replies in groups of at most this many bytes of offsets
(and at most ``GROUP_MAX`` replies): blocks outer, the group inner, so each block of the
sum stays in cache while the group is added."""
GROUP_MAX = 16


@dataclass(frozen=True)
class Merge:
    validator: ReplyValidator
    combiner: OffsetCombiner
    optimizer: ServerOptimizer
    gradient_scale: float = 1.0  # lam in personal mode, 1 in global mode
    privacy: PrivacyPlan | None = None  # dp central: epsilon spent, recorded per round
    threads: int = 0  # merge-threads: workers of the single-pass merge (0: by model size)
    group_bytes: int = GROUP_BYTES  # offsets held at once by the single-pass merge
    group_max: int = GROUP_MAX

    def __post_init__(self) -> None:
        single = (type(self.combiner) is WeightedMean
                  and not self.validator.needs_whole_round)
        checked = (CheckedSum(clip_norm=self.combiner.clip_norm, threads=self.threads)
                   if single else None)
        object.__setattr__(self, "_checked", checked)
        low_rank = (LowRankSum(clip_norm=self.combiner.clip_norm)
                    if single and self.validator.low_rank is not None else None)
        object.__setattr__(self, "_low_rank_sum", low_rank)

    @property
    def single_pass(self) -> bool:
        """Whether replies are checked and added in one pass (``aggregation/streaming``)."""
        return self._checked is not None

    @property
    def holds_every_offset(self) -> bool:
        """Whether a round keeps all its offsets at once (memory O(K x P), not O(P)): a
        non-streaming combiner, or a bound relative to the round's median norm."""
        return self.validator.needs_whole_round or not self.combiner.streaming

    def __call__(
        self, state: ServerState, replies: Iterable[Reply],
        *, scales: Mapping[str, float] | None = None,
    ) -> tuple[ServerState, MergeReport]:
        """``scales``: a factor per reply (by its Reply.node_id) on its accepted offset,
        e.g. an asynchronous merge's staleness weight s(tau); 1 for a reply not named."""
        number = state.round + 1
        template = state.params
        outcomes = _Outcomes(number)
        clock = _Clock()
        t_start = time.perf_counter()
        incoming = outcomes.counted(clock.timed(replies))
        updates = self._validated(incoming, template, outcomes)
        if scales:
            updates = (_scaled(u, scales.get(u.client_id, 1.0)) for u in updates)
        # per-reply factors (staleness) are applied on the two-pass path
        single = self._checked is not None and not scales
        try:
            if single:
                result = self._single_pass(incoming, template, outcomes)
            elif self.holds_every_offset:
                held = list(updates)  # O(K x P): said in docs and log
                verdicts = self.validator.screen({u.client_id: u.norm or 0.0 for u in held})
                for node, reason in verdicts.items():
                    outcomes.reject(node, reason)
                # Each refused reply is one of the hostile clients a robust rule allows for.
                result = self.combiner.combine(
                    [u for u in held if u.client_id not in verdicts], template,
                    rejected=outcomes.rejected())
            else:
                result = self.combiner.combine(updates, template)
        except CombinerError as exc:
            # No rule can merge what is left (e.g. Krum with fewer than 2f' + 3 valid
            # updates): said once for the round; the run goes on with theta unchanged.
            log(WARNING, "round %s: nothing merged: %s", number, exc)
            for node in outcomes.accepted():
                outcomes.reject(node, ROUND_NOT_MERGED, quiet=True)
            result = CombineResult({}, 0, {"error": str(exc)})
        for node, reason in result.dropped.items():
            outcomes.reject(node, reason)

        # The DP mean always returns every tensor (noise included): it steps even when no
        # offset was accepted, since skipping the step would tell that.
        if result.offset:
            grads = (result.offset if single  # already the gradient
                     else gradient(result.offset, scale=self.gradient_scale))
            opt_state = self.optimizer.step(template, grads, state.opt_state)
            state = ServerState(template, opt_state, number)
        else:
            log(WARNING, "round %s: no update accepted, theta unchanged", number)
            state = replace(state, round=number)
        merge_s = time.perf_counter() - t_start - clock.wait_s

        clients = outcomes.all()
        metrics = train_metrics([c for c in clients if c.accepted])
        if self.privacy is not None:  # user-level DP: epsilon spent after this round
            metrics[DP_EPSILON] = self.privacy.epsilon(number)
        report = MergeReport(number, clients, merge_s, clock.wait_s, metrics,
                             result.diagnostics, stepped=bool(result.offset),
                             bytes_up=outcomes.bytes_up)
        log(INFO, "round %s: merged %s of %s updates in %.1f ms (%s)", number,
            report.accepted, len(clients), 1e3 * merge_s, type(self.combiner).__name__)
        return state, report

    def _single_pass(
        self, replies: Iterator[Reply], template: Params, outcomes: _Outcomes
    ) -> CombineResult:
        """Headers checked as replies come; values checked while they are added, a
        group at a time; a reply found bad leaves the sum as if it had never come."""
        if self._low_rank_sum is not None:
            return self._low_rank_pass(replies, template, outcomes)
        acc = self._checked
        assert acc is not None
        acc.reset(template)
        model_bytes = sum(t.numel() * t.element_size() for t in template.values())
        size = max(1, min(self.group_max, self.group_bytes // max(model_bytes, 1)))

        group: list[ClientUpdate] = []
        metrics: list[dict[str, float]] = []

        def flush() -> None:
            fates = acc.add(group, self.validator.judge)
            for u, m, fate in zip(group, metrics, fates, strict=True):
                outcomes.add(_outcome(u, fate, m))
            group.clear()
            metrics.clear()

        for d in self._headers_checked(replies, template, outcomes):
            group.append(d.update)
            metrics.append(d.metrics)
            del d
            if len(group) >= size:
                flush()
        flush()
        # the objective's gradient -scale x mean, in the same pass that divides the sum
        return CombineResult(acc.mean(scale=-self.gradient_scale), acc.added)

    def _low_rank_pass(
        self, replies: Iterator[Reply], template: Params, outcomes: _Outcomes
    ) -> CombineResult:
        """Replies that send LoRA's factors: each one's norm is judged from its factors,
        then s B_i A_i is added into the sum in place (never a dense offset per reply:
        the merge holds theta's size once, plus one reply)."""
        acc, low_rank = self._low_rank_sum, self.validator.low_rank
        assert acc is not None and low_rank is not None
        acc.reset(template)
        for d in self._headers_checked(replies, template, outcomes):
            u = d.update
            fate = acc.add(u.client_id, low_rank.factors(u.offset), u.weight,
                           self.validator.judge)
            outcomes.add(_outcome(u, fate, d.metrics))
            del d, u
        return CombineResult(acc.mean(scale=-self.gradient_scale), acc.added)

    def _headers_checked(
        self, replies: Iterator[Reply], template: Params, outcomes: _Outcomes
    ) -> Iterator[DecodedReply]:
        """Each reply with everything but its offset's values checked, as it comes; a
        rejected one is recorded and skipped. Holds no reply between two yields."""
        for r in replies:
            try:
                d = self.validator.check(r.node_id, r.message, template, values=False)
            except UpdateRejected as exc:
                outcomes.add(ClientOutcome(r.node_id, False, str(exc)))
                continue
            del r
            yield d
            del d

    def _validated(
        self, replies: Iterator[Reply], template: Params, outcomes: _Outcomes
    ) -> Iterator[ClientUpdate]:
        """The accepted updates, one at a time as they arrive; no tensor is kept here."""
        for r in replies:
            try:
                d = self.validator.check(r.node_id, r.message, template)
            except UpdateRejected as exc:
                outcomes.add(ClientOutcome(r.node_id, False, str(exc)))
                continue
            outcomes.add(ClientOutcome(r.node_id, True, None, d.update.weight, d.norm,
                                       d.metrics))
            yield d.update


def _outcome(update: ClientUpdate, fate: Checked, metrics: dict[str, float]) -> ClientOutcome:
    """A single-pass merge's verdict on one update, as the round records it."""
    if fate.problem is not None:
        return ClientOutcome(update.client_id, False, fate.problem)
    return ClientOutcome(update.client_id, True, None, update.weight, fate.norm, metrics)


def _scaled(update: ClientUpdate, factor: float) -> ClientUpdate:
    """The update with its offset times ``factor`` (new tensors: the payload views are
    read-only) and its measured norm scaled with it; weight and fisher unchanged."""
    if factor == 1.0:
        return update
    offset = {name: t * factor for name, t in update.offset.items()}
    norm = None if update.norm is None else update.norm * abs(factor)
    return replace(update, offset=offset, norm=norm)


class _Clock:
    """Seconds spent blocked on the next reply."""

    def __init__(self) -> None:
        self.wait_s = 0.0

    def timed(self, replies: Iterable[Reply]) -> Iterator[Reply]:
        it = iter(replies)
        while True:
            t0 = time.perf_counter()
            r = next(it, None)
            self.wait_s += time.perf_counter() - t0
            if r is None:
                return
            yield r
            del r


def train_metrics(merged: list[ClientOutcome]) -> dict[str, float]:
    """The round's train metrics: counts, and the examples-weighted means of TRAIN_MEANS
    over the merged clients."""
    rows = [{**o.metrics, NUM_EXAMPLES: o.num_examples or 0.0} for o in merged]
    return {NUM_CLIENTS: float(len(merged)), NUM_EXAMPLES: sum(r[NUM_EXAMPLES] for r in rows),
            **weighted_means(rows, TRAIN_MEANS)}
