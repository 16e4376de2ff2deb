"""One round's merge: ``Merge(state, replies) -> (state, MergeReport)``.

The algorithm is injected: a ``ReplyValidator`` accepts or rejects each reply, an
``OffsetCombiner`` combines the accepted offsets, a ``ServerOptimizer`` steps theta on the
objective's gradient. Replies stream in from the grid; each is decoded as zero-copy
tensor views, validated and handed to a streaming combiner one at a time (memory
O(model)), or, for a robust combiner or a bound relative to the round's median norm, held
until the round's last reply (O(K x model)). theta is stepped in place: the returned
state holds the same tensors, one round on.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from logging import INFO, WARNING
from typing import TYPE_CHECKING

from flwr.common import log

from aggregation import ClientUpdate, OffsetCombiner, Params, ServerOptimizer, ServerState
from aggregation import objective_gradient as gradient
from aggregation.combiners import CombinerError, CombineResult
from client.metrics import DP_EPSILON, NUM_CLIENTS, TRAIN_MEANS
from client.task import NUM_EXAMPLES
from coordinator.evaluation import weighted_means
from coordinator.grid import Reply
from coordinator.payloads import payload_bytes
from coordinator.replies import ReplyValidator, UpdateRejected

if TYPE_CHECKING:
    from coordinator.privacy import PrivacyPlan


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

    def add(self, outcome: ClientOutcome) -> None:
        self.by_node[outcome.node_id] = outcome
        if not outcome.accepted:
            self._log(outcome.node_id, outcome.reason or "")

    def reject(self, node: str, reason: str) -> None:
        """An accepted update turned out not to be merged after all."""
        self.add(replace(self.by_node[node], accepted=False, reason=reason))

    def accepted(self) -> list[str]:
        return [n for n, o in self.by_node.items() if o.accepted]

    def all(self) -> tuple[ClientOutcome, ...]:
        rejected = [o for o in self.by_node.values() if not o.accepted]
        return (*rejected, *(o for o in self.by_node.values() if o.accepted))

    def _log(self, node: str, reason: str) -> None:
        log(WARNING, "round %s: update from node %s not merged: %s", self.number, node, reason)


@dataclass(frozen=True)
class Merge:
    validator: ReplyValidator
    combiner: OffsetCombiner
    optimizer: ServerOptimizer
    gradient_scale: float = 1.0  # lam in personal mode, 1 in global mode
    privacy: PrivacyPlan | None = None  # dp central: epsilon spent, recorded per round

    @property
    def holds_every_offset(self) -> bool:
        """Whether a round keeps all its offsets at once (memory O(K x P), not O(P)): a
        non-streaming combiner, or a bound relative to the round's median norm."""
        return self.validator.needs_whole_round or not self.combiner.streaming

    def __call__(
        self, state: ServerState, replies: Iterable[Reply]
    ) -> tuple[ServerState, MergeReport]:
        number = state.round + 1
        template = state.params
        outcomes = _Outcomes(number)
        clock = _Clock()
        t_start = time.perf_counter()
        updates = self._validated(clock.timed(replies), template, outcomes)
        try:
            if self.holds_every_offset:
                held = list(updates)  # O(K x P): said in docs and log
                verdicts = self.validator.screen({u.client_id: u.norm or 0.0 for u in held})
                for node, reason in verdicts.items():
                    outcomes.reject(node, reason)
                result = self.combiner.combine(
                    [u for u in held if u.client_id not in verdicts], template)
            else:
                result = self.combiner.combine(updates, template)
        except CombinerError as exc:
            # E.g. Krum with fewer than 2f + 3 valid updates once bad replies are out: the
            # round merges nothing and says why; the run goes on with theta unchanged.
            for node in outcomes.accepted():
                outcomes.reject(node, f"not merged: {exc}")
            result = CombineResult({}, 0, {"error": str(exc)})
        for node, reason in result.dropped.items():
            outcomes.reject(node, reason)

        # The DP mean always returns every tensor (noise included): it steps even when no
        # offset was accepted, since skipping the step would tell that.
        if result.offset:
            grads = gradient(result.offset, scale=self.gradient_scale)
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

    def _validated(
        self, replies: Iterator[Reply], template: Params, outcomes: _Outcomes
    ) -> Iterator[ClientUpdate]:
        """The accepted updates, one at a time as they arrive; no tensor is kept here."""
        for r in replies:
            outcomes.bytes_up += payload_bytes(r.message)
            try:
                d = self.validator.check(r.node_id, r.message, template)
            except UpdateRejected as exc:
                outcomes.add(ClientOutcome(r.node_id, False, str(exc)))
                continue
            outcomes.add(ClientOutcome(r.node_id, True, None, d.update.weight, d.norm,
                                       d.metrics))
            yield d.update


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
