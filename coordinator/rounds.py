"""The round loop: fedmerge's own, read top to bottom like Flower's ``Strategy.start()``.

    run_round(state):
        open      the round is recorded in flight (resume aborts it if we die)
        configure Flower's FedAvg samples the nodes and builds the train messages
        send      the StreamingGrid pushes them; replies stream back, each with its node
        merge     Merge(state, replies) -> (state, MergeReport with its own timings)
        evaluate  the clients' evaluation of the new theta (federated-evaluation
                  "separate": an evaluate exchange), and the central one
        checkpoint  theta and the optimizer state, atomically, hashed
        commit    the RoundRecord, in one transaction, only after its checkpoint; then
                  its end time, so the round's recorded time includes its commit

Anything that raises before the commit leaves no half round: the round stays in flight
in the store and is redone on resume from the last committed round.

federated-evaluation "folded": each train reply also carries the client's evaluation of
the theta it received, so round n+1's replies evaluate theta_n. Round n+1's commit
records them under round n (replacing what an earlier attempt of round n+1 recorded
there), and the last round's theta, which no train round follows, gets one evaluate
exchange after the loop, unless the store has its evaluation already (a resumed run).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from logging import INFO
from pathlib import Path
from typing import Literal

from flwr.app import ConfigRecord
from flwr.common import log

from aggregation import Params, ServerState
from client.metrics import PARTITION_ID, TRAIN_LOSS, TRAIN_SECONDS
from coordinator.checkpoints import save_checkpoint
from coordinator.evaluation import federated_records, folded_row, headline_of
from coordinator.grid import Exchange, ExchangeTiming, Reply, StreamingGrid
from coordinator.journal import RunJournal
from coordinator.merge import ClientOutcome, Merge, MergeReport
from coordinator.payloads import payload_bytes
from coordinator.replies import reply_metrics
from coordinator.store import EvaluationRecord, RoundRecord, UpdateRecord
from coordinator.strategy import MergeStrategy

BYTES_DOWN = "bytes-down"  # round metrics: tensor bytes of the train requests (theta)
BYTES_UP = "bytes-up"  # ... and of the train replies (offsets or factors)

CentralEvaluation = Callable[[Params], EvaluationRecord]
"""theta -> its "central" evaluation on the coordinator's held-out split."""

ClientEvaluation = Literal["folded", "separate", "off"]


@dataclass(frozen=True)
class RoundLoop:
    grid: StreamingGrid
    strategy: MergeStrategy  # Flower's sampling and message building
    merge: Merge  # the algorithm: validator, combiner, optimizer
    central: CentralEvaluation
    journal: RunJournal
    checkpoint_dir: Path
    train_config: ConfigRecord
    evaluate_config: ConfigRecord
    timeout: float
    seed: int | None = 0  # of Flower's client sampling; None: the OS's entropy (dp central)
    on_commit: Callable[[RoundRecord], None] | None = None
    evaluation: ClientEvaluation = "separate"  # how the clients evaluate theta

    def run(self, state: ServerState, last_round: int) -> tuple[ServerState, EvaluationRecord]:
        """Rounds state.round + 1 ... last_round; the final state and its central
        evaluation. A new run's initial model is evaluated and recorded as round 0."""
        central = starting_central(self.central, self.journal, state, last_round)
        seed_sampling(self.seed, state.round)
        while state.round < last_round:
            state, record = self.run_round(state)
            central = next(e for e in record.evaluations if e.kind == "central")
        if self.evaluation == "folded" and state.round > 0:
            self.evaluate_last(state)
        assert central is not None
        return state, central

    def run_round(self, state: ServerState) -> tuple[ServerState, RoundRecord]:
        number = state.round + 1
        started_at, t0 = datetime.now(UTC), time.perf_counter()
        self.journal.open_round(number, started_at)

        requests = list(self.strategy.train_messages(state, self.train_config, self.grid))
        bytes_down = sum(payload_bytes(m) for m in requests)
        train = self.grid.exchange(requests, timeout=self.timeout)
        folded: list[dict[str, float]] = []  # the clients' evaluation of the theta sent
        state, report = self.merge(
            state, _folded_rows(train, folded) if self.evaluation == "folded" else train)

        t_evaluate = time.perf_counter()
        clients, timings = [], (train.timing,)
        if self.evaluation == "separate":
            clients, evaluate = self.client_evaluation(state)
            timings += (evaluate.timing,)
        evaluations = (*federated_records(clients), self.central(state.params))

        path, digest = save_checkpoint(
            self.checkpoint_dir, round_number=number, params=state.params,
            opt_state_step=state.opt_state.step, opt_slots=state.opt_state.slots,
        )
        record = RoundRecord(
            number=number,
            started_at=started_at,
            finished_at=datetime.now(UTC),
            send_s=train.timing.send_s,
            wait_s=report.wait_s,
            merge_s=report.merge_s,
            evaluate_s=time.perf_counter() - t_evaluate,
            metrics={**report.train_metrics, **_diagnostics(report),
                     BYTES_DOWN: float(bytes_down), BYTES_UP: float(report.bytes_up)},
            checkpoint_path=str(path),
            checkpoint_sha256=digest,
            updates=tuple(update_record(o) for o in report.clients),
            evaluations=evaluations,
            previous_evaluations=tuple(federated_records(folded)),
        )
        self.journal.commit(record, [*timeout_events(number, timings),
                                     *merge_events(number, report)])
        record = replace(record, finished_at=datetime.now(UTC))  # the commit included
        self.journal.finished(number, record.finished_at)

        headline, value = headline_of(evaluations[-1].metrics, evaluations[-1].accuracy)
        log(INFO, "round %s: %s/%s clients merged, train loss %.4f, central %s %.4f, %.2f s",
            number, report.accepted, len(report.clients),
            report.train_metrics.get(TRAIN_LOSS, float("nan")), headline,
            float("nan") if value is None else value, time.perf_counter() - t0)
        if self.on_commit is not None:
            self.on_commit(record)
        return state, record

    def client_evaluation(self, state: ServerState) -> tuple[list[dict[str, float]], Exchange]:
        """The evaluate exchange for ``state``'s theta: the clients' metrics rows."""
        evaluate = self.grid.exchange(
            self.strategy.evaluate_messages(state, self.evaluate_config, self.grid),
            timeout=self.timeout)
        return [m for r in evaluate if (m := reply_metrics(r.message)) is not None], evaluate

    def evaluate_last(self, state: ServerState) -> None:
        """Folded mode: the clients' evaluation of the last theta, which no train round
        carries, by one evaluate exchange recorded under its round; nothing if the store
        has it already (a resumed run that had evaluated it)."""
        if self.journal.has_client_evaluation(state.round):
            return
        clients, evaluate = self.client_evaluation(state)
        self.journal.client_evaluations(state.round, federated_records(clients),
                                        timeout_events(state.round, (evaluate.timing,)))


def _folded_rows(replies: Exchange, rows: list[dict[str, float]]) -> Iterator[Reply]:
    """The replies, unchanged, as they come; each one's folded evaluation is added to
    ``rows`` (whether or not its update is merged: the evaluation is of theta)."""
    for r in replies:
        metrics = reply_metrics(r.message)
        if metrics is not None and (row := folded_row(metrics)) is not None:
            rows.append(row)
        yield r


def starting_central(
    central: CentralEvaluation, journal: RunJournal, state: ServerState, last: int
) -> EvaluationRecord | None:
    """The central evaluation a run starts from: a new run's initial model (recorded as
    round 0), or the model of a run with nothing left to do; None otherwise."""
    if state.round != 0 and state.round < last:
        return None
    evaluation = central(state.params)
    if state.round == 0:
        journal.initial(evaluation)
    return evaluation


def seed_sampling(seed: int | None, round_number: int) -> None:
    """Flower samples nodes with `random`; with dp the sample must stay secret (seed
    None: the OS's entropy)."""
    random.seed(None if seed is None else seed * 1_000_003 + round_number)


def update_record(o: ClientOutcome) -> UpdateRecord:
    pid = o.metrics.get(PARTITION_ID)
    return UpdateRecord(
        node_id=o.node_id,
        accepted=o.accepted,
        reason=o.reason,
        partition_id=None if pid is None else int(pid),
        num_examples=None if o.num_examples is None else int(o.num_examples),
        offset_norm=o.offset_norm,
        train_seconds=o.metrics.get(TRAIN_SECONDS),
        metrics=o.metrics,
    )


def timeout_events(number: int, timings: tuple[ExchangeTiming, ...]) -> list[tuple[str, str]]:
    """A "round-timeout" event for each exchange that stopped at the round timeout."""
    return [
        ("round-timeout",
         f"round {number}: no {t.kind} reply from node(s) {', '.join(t.missing)} within "
         f"round-timeout; {t.replies} of {t.expected} replies came")
        for t in timings if t.timed_out
    ]


def merge_events(number: int, report: MergeReport) -> list[tuple[str, str]]:
    """One "merge-refused" event for a round no rule could merge (said once, not per
    client)."""
    error = report.diagnostics.get("error")
    return [("merge-refused", f"round {number}: nothing merged: {error}")] if error else []


def _diagnostics(report: MergeReport) -> dict[str, object]:
    return {f"combiner-{k}": v for k, v in report.diagnostics.items()}
