"""``RoundLedger``: what a round did, from its hooks to one database commit.

Flower's ``Strategy.start`` calls, per round: configure_train, aggregate_train,
aggregate_evaluate, then the central ``evaluate_fn``. The ledger hears each (the strategy
reports to it as its ``RoundObserver``; the central evaluation is its ``evaluate``), and
at the last one writes the checkpoint (atomically, hash kept) and then commits the round,
its client updates and evaluations in one transaction. A round that dies before that
stays 'running' in the database and is marked aborted on resume.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from logging import INFO
from pathlib import Path

from flwr.app import ArrayRecord, MetricRecord
from flwr.common import log
from sqlalchemy.orm import Session, sessionmaker

from aggregation import ServerState
from coordinator.checkpoints import save_checkpoint
from coordinator.grid import StreamingGrid
from coordinator.store import EvaluationRecord, RoundRecord, UpdateRecord, in_transaction, repo
from coordinator.strategy import MergeReport, RoundObserver, examples_weighted

CentralEval = Callable[[ServerState], tuple[float, float, int]]
"""theta -> (loss, accuracy, examples) on the coordinator's held-out split."""


@dataclass
class _OpenRound:
    number: int
    started_at: datetime
    t0: float
    report: MergeReport | None = None
    t_merged: float = 0.0
    evaluations: list[EvaluationRecord] = field(default_factory=list)


class RoundLedger(RoundObserver):
    def __init__(
        self,
        *,
        state: ServerState,
        sessions: sessionmaker[Session],
        run_id: str,
        checkpoint_dir: Path,
        grid: StreamingGrid,
        central_eval: CentralEval,
        on_commit: Callable[[RoundRecord], None] | None = None,
    ) -> None:
        self.sessions = sessions
        self.run_id = run_id
        self.checkpoint_dir = checkpoint_dir
        self.grid = grid
        self.central_eval = central_eval
        self.on_commit = on_commit
        self._open: _OpenRound | None = None
        self.state = state  # the latest merged state
        self.central_accuracy: float | None = None  # of ``state``, once evaluated

    # --- RoundObserver: called by MergeStrategy
    def round_started(self, server_round: int) -> None:
        now = datetime.now(UTC)
        self._open = _OpenRound(server_round, now, time.perf_counter())
        in_transaction(self.sessions, lambda s: repo.start_round(s, self.run_id, server_round, now),
                       what=f"round {server_round} start")

    def merged(self, report: MergeReport, state: ServerState) -> None:
        r = self._current(report.round)
        r.report, r.t_merged = report, time.perf_counter()
        self.state = state

    def evaluated(self, server_round: int, clients: list[dict[str, float]]) -> None:
        if self._open is None or not clients:
            return
        self._open.evaluations.extend(_federated(clients))

    # --- Flower's evaluate_fn: the last hook of each round
    def evaluate(self, server_round: int, arrays: ArrayRecord) -> MetricRecord:
        if server_round == 0 or self._open is None:
            # The model before this coordinator's first round. The initial model is
            # recorded as round 0; a resumed one was recorded when its round committed.
            loss, acc, n = self.central_eval(self.state)
            self.central_accuracy = acc
            if self.state.round == 0:
                initial = EvaluationRecord("central", loss, acc, n)
                with self.sessions.begin() as s:
                    repo.add_evaluation(s, self.run_id, 0, initial)
            return MetricRecord({"central-loss": loss, "central-acc": acc})
        r = self._open
        assert r.report is not None, f"round {r.number} ended before its merge"
        loss, acc, n = self.central_eval(self.state)
        self.central_accuracy = acc
        r.evaluations.append(EvaluationRecord("central", loss, acc, n))
        path, digest = save_checkpoint(
            self.checkpoint_dir,
            round_number=r.number,
            params=self.state.params,
            opt_state_step=self.state.opt_state.step,
            opt_slots=self.state.opt_state.slots,
        )
        record = RoundRecord(
            number=r.number,
            started_at=r.started_at,
            finished_at=datetime.now(UTC),
            send_s=self.grid.last_train.send_s,
            wait_s=r.report.wait_s,
            merge_s=r.report.merge_s,
            evaluate_s=time.perf_counter() - r.t_merged,
            metrics={**r.report.train_metrics, **_diagnostics(r.report)},
            checkpoint_path=str(path),
            checkpoint_sha256=digest,
            updates=tuple(_update_record(o) for o in r.report.clients),
            evaluations=tuple(r.evaluations),
        )
        def commit(s: Session) -> None:
            repo.commit_round(s, self.run_id, record)
            for kind, t in self.grid.timings.items():
                if t.timed_out:
                    repo.add_event(
                        s, self.run_id, "round-timeout",
                        f"round {r.number}: no {kind} reply from node(s) "
                        f"{', '.join(t.missing)} within round-timeout; "
                        f"{t.replies} of {t.expected} replies came",
                    )
        in_transaction(self.sessions, commit, what=f"round {r.number} commit",
                       done=lambda s: repo.round_is_committed(s, self.run_id, record))
        self.grid.timings.clear()
        self._open = None
        log(
            INFO, "round %s: %s/%s clients merged, train loss %.4f, central acc %.4f, %.2f s",
            r.number, r.report.accepted, len(r.report.clients),
            r.report.train_metrics.get("train-loss", float("nan")), acc,
            (record.finished_at - record.started_at).total_seconds(),
        )
        if self.on_commit is not None:
            self.on_commit(record)
        return MetricRecord({"central-loss": loss, "central-acc": acc})

    def _current(self, number: int) -> _OpenRound:
        if self._open is None or self._open.number != number:
            raise RuntimeError(f"round {number} reported but round {self._open} is open")
        return self._open


def _update_record(o) -> UpdateRecord:  # o: ClientOutcome
    pid = o.metrics.get("partition-id")
    return UpdateRecord(
        node_id=o.node_id,
        accepted=o.accepted,
        reason=o.reason,
        partition_id=None if pid is None else int(pid),
        num_examples=None if o.num_examples is None else int(o.num_examples),
        offset_norm=o.offset_norm,
        train_seconds=o.metrics.get("train-seconds"),
        metrics=o.metrics,
    )


def _diagnostics(report: MergeReport) -> dict[str, object]:
    return {f"combiner-{k}": v for k, v in report.diagnostics.items()}


def _federated(clients: list[dict[str, float]]) -> list[EvaluationRecord]:
    """Examples-weighted federated evaluation of theta, and of each theta + theta_i."""
    per_client = {str(int(c.get("partition-id", i))): c for i, c in enumerate(clients)}
    out = []
    acc, n = examples_weighted(clients, "eval-acc")
    if acc is not None:
        loss, _ = examples_weighted(clients, "eval-loss")
        out.append(EvaluationRecord("federated", loss, acc, int(n), {"clients": per_client}))
    acc, n = examples_weighted(clients, "personal-acc")
    if acc is not None:
        loss, _ = examples_weighted(clients, "personal-loss")
        out.append(EvaluationRecord("personalized", loss, acc, int(n)))
    return out
