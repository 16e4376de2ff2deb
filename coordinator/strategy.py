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

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.common import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from aggregation import (
    ClientUpdate,
    OffsetCombiner,
    ServerOptimizer,
    ServerState,
    objective_gradient,
)
from aggregation.combiners import CombinerError, CombineResult
from coordinator.payloads import params_record
from coordinator.replies import DecodedReply, UpdateLimits, UpdateRejected, decode_reply


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

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        number = self.global_round(server_round)
        template = self._state.params
        accepted: dict[str, DecodedReply] = {}
        rejected: list[ClientOutcome] = []
        wait_s = 0.0
        materialize = self.max_norm_ratio > 0 or not self.combiner.streaming
        check_values = materialize or not self.combiner.guards_values

        def valid_updates() -> Iterator[ClientUpdate]:
            nonlocal wait_s
            it = iter(replies)
            while True:
                t0 = time.perf_counter()
                msg = next(it, None)  # blocks while replies are still on their way
                wait_s += time.perf_counter() - t0
                if msg is None:
                    return
                try:
                    decoded = decode_reply(
                        msg, template, self.limits, check_values=check_values
                    )
                except UpdateRejected as exc:
                    rejected.append(self._reject(number, str(msg.metadata.src_node_id), str(exc)))
                    continue
                partial = decoded.update.offset.keys() != template.keys()
                if partial and self.combiner.full_updates_only:
                    reason = (f"partial update: combiner {type(self.combiner).__name__} needs "
                              "every tensor")
                    rejected.append(
                        self._reject(number, decoded.update.client_id, reason, decoded=decoded)
                    )
                    continue
                accepted[decoded.update.client_id] = decoded
                yield decoded.update

        t_start = time.perf_counter()
        try:
            if materialize:
                updates = list(valid_updates())  # O(K x P): said in the docs and the log
                if self.max_norm_ratio > 0:
                    updates = self._within_median_bound(number, updates, accepted, rejected)
                result = self.combiner.combine(updates, template)
            else:
                result = self.combiner.combine(valid_updates(), template)
        except CombinerError as exc:
            # E.g. Krum with fewer than 2f + 3 valid updates once bad replies are out: the
            # round merges nothing and says why; the run goes on with theta unchanged.
            for cid, d in list(accepted.items()):
                del accepted[cid]
                rejected.append(self._reject(number, cid, f"not merged: {exc}", decoded=d))
            result = CombineResult({}, 0, {"error": str(exc)})

        for cid, reason in result.refused.items():
            rejected.append(self._reject(number, cid, reason, decoded=accepted.pop(cid)))
        outcomes = rejected + [
            ClientOutcome(
                cid, True, None, d.update.weight, result.norms.get(cid, d.norm), d.metrics
            )
            for cid, d in accepted.items()
        ]
        arrays = None
        if result.num_clients:
            grads = objective_gradient(result.offset, scale=self.gradient_scale)
            opt_state = self.optimizer.step(template, grads, self._state.opt_state)
            self._state = ServerState(template, opt_state, number)
            arrays = params_record(template)
        else:
            log(WARNING, "round %s: no update accepted, theta unchanged", number)
            self._state = replace(self._state, round=number)
        merge_s = time.perf_counter() - t_start - wait_s

        train_metrics = _weighted_metrics([o for o in outcomes if o.accepted])
        report = MergeReport(
            number, tuple(outcomes), merge_s, wait_s, train_metrics, result.diagnostics
        )
        log(
            INFO, "round %s: merged %s of %s updates in %.1f ms (%s)", number, report.accepted,
            len(outcomes), 1e3 * merge_s, type(self.combiner).__name__,
        )
        self.observer.merged(report, self._state)
        return arrays, (MetricRecord(train_metrics) if arrays is not None else None)

    @staticmethod
    def _reject(
        number: int, node: str, reason: str, *, decoded: DecodedReply | None = None
    ) -> ClientOutcome:
        log(WARNING, "round %s: rejected update from node %s: %s", number, node, reason)
        if decoded is None:
            return ClientOutcome(node, False, reason)
        return ClientOutcome(
            node, False, reason, decoded.update.weight, decoded.norm, decoded.metrics
        )

    def _within_median_bound(
        self, number: int, updates: list[ClientUpdate], accepted: dict[str, DecodedReply],
        rejected: list[ClientOutcome],
    ) -> list[ClientUpdate]:
        """Drop offsets whose norm exceeds max-norm-ratio x the round's median norm."""
        if not updates:
            return updates
        median = statistics.median(accepted[u.client_id].norm for u in updates)
        bound = self.max_norm_ratio * median
        kept = []
        for u in updates:
            norm = accepted[u.client_id].norm
            if norm <= bound:
                kept.append(u)
                continue
            decoded = accepted.pop(u.client_id)
            reason = (f"offset norm {norm:.4g} exceeds max-norm-ratio {self.max_norm_ratio} "
                      f"x the round's median {median:.4g}")
            rejected.append(self._reject(number, u.client_id, reason, decoded=decoded))
        return kept

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        ok = [m for m in replies if not m.has_error()]
        clients = [
            {k: float(v) for k, v in m.content["metrics"].items()}
            for m in ok if "metrics" in m.content
        ]
        self.observer.evaluated(self._state.round, clients)
        if not clients:
            return None
        return MetricRecord(_weighted_eval(clients))


def _weighted_metrics(outcomes: list[ClientOutcome]) -> dict[str, float]:
    total = sum(o.num_examples or 0.0 for o in outcomes)
    out: dict[str, float] = {"num-clients": float(len(outcomes)), "num-examples": total}
    for key in ("train-loss", "shared-acc", "personal-acc"):
        pairs = [(o.metrics[key], o.num_examples or 0.0) for o in outcomes if key in o.metrics]
        if pairs and total > 0:
            out[key] = sum(v * w for v, w in pairs) / sum(w for _, w in pairs)
    return out


def _weighted_eval(clients: list[dict[str, float]]) -> dict[str, float]:
    out: dict[str, float] = {}
    for key in ("eval-loss", "eval-acc", "personal-loss", "personal-acc"):
        pairs = [(c[key], c.get("num-examples", 1.0)) for c in clients if key in c]
        if pairs:
            out[key] = sum(v * w for v, w in pairs) / sum(w for _, w in pairs)
    out["num-clients"] = float(len(clients))
    return out
