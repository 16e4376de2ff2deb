"""``MergeStrategy``: Flower's FedAvg sampling and round loop, this project's merge.

Only ``aggregate_train`` (and the metrics half of ``aggregate_evaluate``) change: each
reply is decoded as zero-copy tensor views, validated, and streamed into the injected
``OffsetCombiner``; the objective's gradient goes to the injected ``ServerOptimizer``,
which steps theta in place. The strategy holds one value, the ``ServerState``, and
replaces it each round. What a round did goes to the ``RoundLedger``.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from logging import INFO, WARNING
from typing import TYPE_CHECKING

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.common import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from aggregation import (
    ClientUpdate,
    OffsetCombiner,
    Params,
    ServerOptimizer,
    ServerState,
    objective_gradient,
)
from aggregation.combiners import CombinerError, CombineResult
from coordinator.payloads import params_record
from coordinator.replies import UpdateLimits, UpdateRejected, decode_reply, reply_metrics

if TYPE_CHECKING:
    from coordinator.privacy import PrivacyPlan


@dataclass(frozen=True)
class ClientOutcome:
    """One reply's fate: merged, or rejected and why."""

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

    @property
    def accepted(self) -> int:
        return sum(c.accepted for c in self.clients)


class RoundObserver:
    """Hooks the strategy calls; the default does nothing (see coordinator/ledger.py)."""

    def round_started(self, server_round: int) -> None: ...
    def merged(self, report: MergeReport, state: ServerState) -> None: ...
    def evaluated(self, server_round: int, clients: list[dict[str, float]]) -> None: ...


class _Intake:
    """One round's replies, decoded and checked one at a time as they arrive, and what
    became of each. It keeps no tensors: each offset goes on to the combiner alone, so a
    streaming combiner holds one reply at a time."""

    def __init__(
        self, number: int, template: Params, limits: UpdateLimits, *, check_values: bool,
        full_only: bool,
    ) -> None:
        self.number = number
        self.template = template
        self.limits = limits
        self.check_values = check_values
        self.full_only = full_only
        self.kept: dict[str, ClientOutcome] = {}
        self.rejected: list[ClientOutcome] = []
        self.wait_s = 0.0  # blocked on replies still in flight

    def updates(self, replies: Iterable[Message]) -> Iterator[ClientUpdate]:
        it = iter(replies)
        while True:
            t0 = time.perf_counter()
            msg = next(it, None)
            self.wait_s += time.perf_counter() - t0
            if msg is None:
                return
            node = str(msg.metadata.src_node_id)
            try:
                d = decode_reply(msg, self.template, self.limits, check_values=self.check_values)
            except UpdateRejected as exc:
                self._log(node, str(exc))
                self.rejected.append(ClientOutcome(node, False, str(exc)))
                continue
            self.kept[node] = ClientOutcome(node, True, None, d.update.weight, d.norm, d.metrics)
            if self.full_only and d.update.offset.keys() != self.template.keys():
                self.reject(node, "partial update: this combiner needs every tensor")
                continue
            yield d.update

    def reject(self, node: str, reason: str) -> None:
        """A kept update turned out not to be merged after all."""
        self._log(node, reason)
        self.rejected.append(replace(self.kept.pop(node), accepted=False, reason=reason))

    def outcomes(self, norms: dict[str, float]) -> tuple[ClientOutcome, ...]:
        merged = [replace(o, offset_norm=norms.get(cid, o.offset_norm))
                  for cid, o in self.kept.items()]
        return (*self.rejected, *merged)

    def _log(self, node: str, reason: str) -> None:
        log(WARNING, "round %s: rejected update from node %s: %s", self.number, node, reason)


class MergeStrategy(FedAvg):
    def __init__(
        self,
        *,
        state: ServerState,
        combiner: OffsetCombiner,
        optimizer: ServerOptimizer,
        gradient_scale: float = 1.0,
        limits: UpdateLimits | None = None,
        max_norm_ratio: float = 0.0,
        observer: RoundObserver | None = None,
        privacy: PrivacyPlan | None = None,
        **fedavg_options: object,
    ) -> None:
        super().__init__(**fedavg_options)
        self._state = state
        self.combiner = combiner
        self.optimizer = optimizer
        self.gradient_scale = gradient_scale
        self.limits = limits or UpdateLimits()
        self.max_norm_ratio = max_norm_ratio
        self.observer = observer or RoundObserver()
        self.privacy = privacy  # dp central: the accountant's plan, epsilon per round

    @property
    def state(self) -> ServerState:
        return self._state

    def global_round(self, server_round: int) -> int:
        """Flower counts a resumed run's rounds from 1 again; the state counts on."""
        return self._state.round + 1 if server_round else 0

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        number = self.global_round(server_round)
        self.observer.round_started(number)
        # Clients see the run's round number (it seeds their local SGD), not Flower's
        # count, which starts again at 1 when a run resumes.
        return super().configure_train(number, arrays, config, grid)

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        return super().configure_evaluate(self._state.round, arrays, config, grid)

    @property
    def holds_every_offset(self) -> bool:
        """Whether a round keeps all its offsets at once (memory O(K x P), not O(P)): a
        non-streaming combiner, or a bound relative to the round's median norm."""
        return self.max_norm_ratio > 0 or not self.combiner.streaming

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        number = self.global_round(server_round)
        template = self._state.params
        materialize = self.holds_every_offset
        intake = _Intake(
            number, template, self.limits,
            check_values=materialize or not self.combiner.guards_values,
            full_only=self.combiner.full_updates_only,
        )
        t_start = time.perf_counter()
        try:
            if materialize:
                updates = list(intake.updates(replies))  # O(K x P): said in docs and log
                if self.max_norm_ratio > 0:
                    updates = self._within_median_bound(updates, intake)
                result = self.combiner.combine(updates, template)
            else:
                result = self.combiner.combine(intake.updates(replies), template)
        except CombinerError as exc:
            # E.g. Krum with fewer than 2f + 3 valid updates once bad replies are out: the
            # round merges nothing and says why; the run goes on with theta unchanged.
            for cid in list(intake.kept):
                intake.reject(cid, f"not merged: {exc}")
            result = CombineResult({}, 0, {"error": str(exc)})
        for cid, reason in result.refused.items():
            intake.reject(cid, reason)

        arrays = None
        # The DP mean always returns every tensor (noise included): it steps even when no
        # offset was accepted, since skipping the step would tell that.
        if result.offset:
            grads = objective_gradient(result.offset, scale=self.gradient_scale)
            opt_state = self.optimizer.step(template, grads, self._state.opt_state)
            self._state = ServerState(template, opt_state, number)
            arrays = params_record(template)
        else:
            log(WARNING, "round %s: no update accepted, theta unchanged", number)
            self._state = replace(self._state, round=number)
        merge_s = time.perf_counter() - t_start - intake.wait_s

        outcomes = intake.outcomes(result.norms)
        train_metrics = _weighted_metrics([o for o in outcomes if o.accepted])
        if self.privacy is not None:  # user-level DP: epsilon spent after this round
            train_metrics["dp-epsilon"] = self.privacy.epsilon(number)
        report = MergeReport(
            number, outcomes, merge_s, intake.wait_s, train_metrics, result.diagnostics
        )
        log(
            INFO, "round %s: merged %s of %s updates in %.1f ms (%s)", number, report.accepted,
            len(outcomes), 1e3 * merge_s, type(self.combiner).__name__,
        )
        self.observer.merged(report, self._state)
        return arrays, (MetricRecord(train_metrics) if arrays is not None else None)

    def _within_median_bound(
        self, updates: list[ClientUpdate], intake: _Intake
    ) -> list[ClientUpdate]:
        """Drop offsets whose norm exceeds max-norm-ratio x the round's median norm."""
        if not updates:
            return updates
        norms = {u.client_id: intake.kept[u.client_id].offset_norm or 0.0 for u in updates}
        median = statistics.median(norms.values())
        kept = []
        for u in updates:
            if norms[u.client_id] <= self.max_norm_ratio * median:
                kept.append(u)
            else:
                intake.reject(u.client_id, (
                    f"offset norm {norms[u.client_id]:.4g} exceeds max-norm-ratio "
                    f"{self.max_norm_ratio} x the round's median {median:.4g}"
                ))
        return kept

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        clients = [metrics for m in replies if (metrics := reply_metrics(m)) is not None]
        self.observer.evaluated(self._state.round, clients)
        if not clients:
            return None
        return MetricRecord({"num-clients": float(len(clients)), **_weighted(
            clients, ("eval-loss", "eval-acc", "personal-loss", "personal-acc"))})


def examples_weighted(rows: list[dict[str, float]], key: str) -> tuple[float | None, float]:
    """The num-examples-weighted mean of ``key`` over the rows that have it (None if none
    does), and their total weight."""
    pairs = [(r[key], r.get("num-examples", 1.0)) for r in rows if key in r]
    total = sum(w for _, w in pairs)
    if not pairs or total <= 0:
        return None, 0.0
    return sum(v * w for v, w in pairs) / total, total


def _weighted_metrics(outcomes: list[ClientOutcome]) -> dict[str, float]:
    rows = [{**o.metrics, "num-examples": o.num_examples or 0.0} for o in outcomes]
    total = sum(r["num-examples"] for r in rows)
    return {"num-clients": float(len(outcomes)), "num-examples": total,
            **_weighted(rows, ("train-loss", "shared-acc", "personal-acc"))}


def _weighted(rows: list[dict[str, float]], keys: tuple[str, ...]) -> dict[str, float]:
    """The examples-weighted mean of each of ``keys`` that some row has."""
    means = {key: examples_weighted(rows, key)[0] for key in keys}
    return {key: value for key, value in means.items() if value is not None}
