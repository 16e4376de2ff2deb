"""The buffered asynchronous loop (FedBuff), beside the round loop, read top to bottom:

    run(state):
        start     `concurrency` nodes are sampled and each is sent theta (version v)
        run_version(state):
            open      the version is recorded in flight (resume aborts it if we die)
            fill      replies stream in; each is checked on arrival: too stale
                      (tau = v - its base version > max-staleness), already merged, or
                      invalid -> recorded as rejected; else it joins the buffer. The
                      node is sent the current theta at once (after the step if its
                      reply completed the buffer)
            merge     Merge(state, buffer, scales=s(tau) per reply) -> (state, report)
            evaluate  the central evaluation of the new theta (no client evaluation:
                      the nodes are kept busy training)
            checkpoint, commit   as a round, with the version as the round number

A version is one merge step. Each update carries a unique id (node:base:message id) in
its recorded metrics, with its base version, staleness and weight; the ids merged
before a resume are refused if they come again, and the messages in flight at each
commit are recorded with it, so a resumed run pulls them (on a grid that still holds
them) and takes or refuses them by the staleness rule. docs/async.md has the math.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from logging import INFO, WARNING
from pathlib import Path

from flwr.app import ConfigRecord, Message
from flwr.common import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy.strategy_utils import sample_nodes
from sqlalchemy.orm import Session, sessionmaker

from aggregation import ServerState
from aggregation.staleness import StalenessWeight
from client.metrics import TRAIN_LOSS
from coordinator.checkpoints import save_checkpoint
from coordinator.config import MergeConfig
from coordinator.evaluation import headline_of
from coordinator.grid import Reply
from coordinator.inflight import InFlight, Ticket
from coordinator.journal import RunJournal
from coordinator.merge import ClientOutcome, Merge, MergeReport
from coordinator.replies import UpdateRejected
from coordinator.rounds import (
    CentralEvaluation,
    RoundLoop,
    seed_sampling,
    starting_central,
    update_record,
)
from coordinator.store import EvaluationRecord, RoundRecord, UpdateRecord, repo

IN_FLIGHT = "in-flight"  # a version's metrics: the messages in flight at its commit
UPDATE_ID, BASE_VERSION, STALENESS, WEIGHT = "update-id", "base-version", "staleness", "weight"


@dataclass(frozen=True)
class BufferSettings:
    size: int  # M: accepted replies per merge step
    concurrency: int  # nodes training at once; 0: every node connected at the start
    min_nodes: int  # nodes to wait for before starting
    max_staleness: int  # replies with tau above it are rejected
    weight: Callable[[int], float] = field(default_factory=StalenessWeight)  # s(tau)


@dataclass
class _Buffer:
    """One version's replies: those that joined the buffer, and those refused on
    arrival (recorded with the version)."""

    taken: list[tuple[Ticket, Message]] = field(default_factory=list)
    refused: list[UpdateRecord] = field(default_factory=list)
    waiting: list[int] = field(default_factory=list)  # nodes to send theta after the step


@dataclass(frozen=True)
class BufferedLoop:
    grid: Grid
    merge: Merge  # the algorithm: validator, combiner, optimizer
    central: CentralEvaluation
    journal: RunJournal
    checkpoint_dir: Path
    train_config: ConfigRecord
    buffer: BufferSettings
    timeout: float  # round-timeout: a message unanswered this long is given up
    seed: int | None = 0  # of the node sampling
    merged: frozenset[str] = frozenset()  # update ids merged before a resume
    resumed_in_flight: tuple[Ticket, ...] = ()  # in flight at the last commit before it
    on_commit: Callable[[RoundRecord], None] | None = None
    min_interval: float = 0.002
    max_interval: float = 0.05

    def run(self, state: ServerState, last_version: int) -> tuple[ServerState, EvaluationRecord]:
        """Versions state.round + 1 ... last_version; the final state and its central
        evaluation. A new run's initial model is evaluated and recorded as version 0."""
        central = starting_central(self.central, self.journal, state, last_version)
        if state.round >= last_version:
            assert central is not None
            return state, central
        work = InFlight(self.grid, self.train_config, min_interval=self.min_interval,
                     max_interval=self.max_interval)
        for t in self.resumed_in_flight:
            work.tickets[t.message_id] = t
        seed_sampling(self.seed, state.round)
        k = self.buffer.concurrency
        nodes, connected = sample_nodes(self.grid, max(self.buffer.min_nodes, k),
                                        k or self.buffer.min_nodes)
        if not k:  # every node connected now
            nodes = sorted(connected)
        work.send(nodes, state)
        merged = set(self.merged)
        try:
            while state.round < last_version:
                state, record = self.run_version(state, work, merged)
                central = next(e for e in record.evaluations if e.kind == "central")
        finally:
            self._left_in_flight(work)
        assert central is not None
        return state, central

    def run_version(
        self, state: ServerState, work: InFlight, merged: set[str]
    ) -> tuple[ServerState, RoundRecord]:
        number = state.round + 1
        started_at, t0 = datetime.now(UTC), time.perf_counter()
        self.journal.open_round(number, started_at)
        buffer, events = self._fill(state, work, merged)

        weights = {t.update_id: self.buffer.weight(state.round - t.base) for t, _ in buffer.taken}
        replies = [Reply(t.update_id, m) for t, m in buffer.taken]
        state, report = self.merge(state, replies, scales=weights)
        work.send(buffer.waiting, state)  # the nodes whose replies completed the buffer
        merged.update(o.node_id for o in report.clients if o.accepted)

        t_evaluate = time.perf_counter()
        central = self.central(state.params)
        path, digest = save_checkpoint(
            self.checkpoint_dir, round_number=number, params=state.params,
            opt_state_step=state.opt_state.step, opt_slots=state.opt_state.slots,
        )
        send_s, wait_s = work.take_timings()
        tickets = {t.update_id: t for t, _ in buffer.taken}
        record = RoundRecord(
            number=number,
            started_at=started_at,
            finished_at=datetime.now(UTC),
            send_s=send_s,
            wait_s=wait_s,
            merge_s=report.merge_s,
            evaluate_s=time.perf_counter() - t_evaluate,
            metrics={**report.train_metrics, **_diagnostics(report), "merge": "async",
                     IN_FLIGHT: work.in_flight()},
            checkpoint_path=str(path),
            checkpoint_sha256=digest,
            updates=(*buffer.refused,
                     *(_version_update(o, tickets[o.node_id], number - 1, weights)
                       for o in report.clients)),
            evaluations=(central,),
        )
        self.journal.commit(record, events)

        headline, value = headline_of(central.metrics, central.accuracy)
        log(INFO, "version %s: %s/%s updates merged (%s refused on arrival), train loss "
            "%.4f, central %s %.4f, %.2f s", number, report.accepted, len(report.clients),
            len(buffer.refused), report.train_metrics.get(TRAIN_LOSS, float("nan")), headline,
            float("nan") if value is None else value, time.perf_counter() - t0)
        if self.on_commit is not None:
            self.on_commit(record)
        return state, record

    def _fill(
        self, state: ServerState, work: InFlight, merged: set[str]
    ) -> tuple[_Buffer, list[tuple[str, str]]]:
        """Replies until M are accepted into the buffer; the nodes of refused replies
        and of all but the last accepted one are sent the current theta at once."""
        buffer, events = _Buffer(), []
        number = state.round + 1
        while len(buffer.taken) < self.buffer.size:
            for t in work.expired(self.timeout):
                events.append(("round-timeout", f"version {number}: no reply from node "
                               f"{t.node} to version {t.base} within round-timeout; it is "
                               "sent the current theta"))
                log(WARNING, "%s", events[-1][1])
                work.send([t.node], state)
            got = work.next_reply(time.monotonic() + min(self.timeout, 1.0))
            if got is None:
                continue
            ticket, msg = got
            reason = self._refusal(ticket, msg, state, merged)
            if reason is None:
                buffer.taken.append((ticket, msg))
            else:
                buffer.refused.append(_refused(ticket, state.round, reason))
                log(WARNING, "version %s: update %s not merged: %s", number,
                    ticket.update_id, reason)
            if not ticket.occupies_node:
                continue  # re-attached after a resume: its node already has new work
            if len(buffer.taken) < self.buffer.size:
                work.send([ticket.node], state)
            else:
                buffer.waiting.append(ticket.node)
        return buffer, events

    def _refusal(
        self, ticket: Ticket, msg: Message, state: ServerState, merged: set[str]
    ) -> str | None:
        """Why the reply cannot join the buffer, or None."""
        tau = state.round - ticket.base
        if ticket.update_id in merged:
            return f"update {ticket.update_id} was already merged"
        if tau > self.buffer.max_staleness:
            return (f"stale: computed from version {ticket.base}, {tau} versions old, "
                    f"above max-staleness {self.buffer.max_staleness}")
        try:
            self.merge.validator.check(ticket.update_id, msg, state.params)
        except UpdateRejected as exc:
            return str(exc)
        return None

    def _left_in_flight(self, work: InFlight) -> None:
        lost = [t for t in work.tickets.values() if not t.occupies_node]
        if lost:
            message = (f"{len(lost)} update(s) in flight when the run stopped before its "
                       "resume never came back (a resumed run is a new Flower run, which "
                       "cannot pull the old run's replies): "
                       + ", ".join(t.update_id for t in lost))
            log(WARNING, "%s", message)
            self.journal.event("info", message)


def _version_update(
    o: ClientOutcome, ticket: Ticket, version: int, weights: Mapping[str, float]
) -> UpdateRecord:
    """A merged (or, by Merge, rejected) update as stored: the node it came from, and
    its id, base version, staleness and weight (examples x s(tau)) in its metrics."""
    s = weights[o.node_id]
    rec = update_record(o)
    return replace(rec, node_id=str(ticket.node), metrics={
        **rec.metrics, UPDATE_ID: ticket.update_id, BASE_VERSION: ticket.base,
        STALENESS: version - ticket.base, "staleness-weight": s,
        WEIGHT: (o.num_examples or 0.0) * s})


def _refused(ticket: Ticket, version: int, reason: str) -> UpdateRecord:
    return UpdateRecord(node_id=str(ticket.node), accepted=False, reason=reason, metrics={
        UPDATE_ID: ticket.update_id, BASE_VERSION: ticket.base,
        STALENESS: version - ticket.base})


def merged_update_ids(updates: Iterable[tuple[bool, Mapping[str, object]]]) -> frozenset[str]:
    """The ids of the merged updates among stored (accepted, metrics) rows."""
    return frozenset(str(m[UPDATE_ID]) for ok, m in updates if ok and UPDATE_ID in m)


def _diagnostics(report: MergeReport) -> dict[str, object]:
    return {f"combiner-{k}": v for k, v in report.diagnostics.items()}



def buffered_loop(
    cfg: MergeConfig, rounds: RoundLoop, sessions: sessionmaker[Session], run_id: str
) -> BufferedLoop:
    """The async loop of ``cfg``, with the parts of the round loop built for it; on a
    resumed run, with the update ids merged so far and the messages in flight at the
    last commit (from the store)."""
    with sessions.begin() as s:
        merged = merged_update_ids((u.accepted, u.metrics) for u in repo.updates_of(s, run_id))
        last = repo.last_committed_round(s, run_id)
        in_flight = (last.metrics or {}).get(IN_FLIGHT, []) if last is not None else []
    settings = BufferSettings(
        size=cfg.buffer_size, concurrency=cfg.concurrency, min_nodes=cfg.min_nodes,
        max_staleness=cfg.max_staleness,
        weight=StalenessWeight(cfg.staleness, cfg.staleness_exponent, cfg.staleness_hinge))
    return BufferedLoop(
        grid=rounds.grid, merge=rounds.merge, central=rounds.central, journal=rounds.journal,
        checkpoint_dir=rounds.checkpoint_dir, train_config=rounds.train_config,
        buffer=settings, timeout=rounds.timeout, seed=rounds.seed, merged=merged,
        resumed_in_flight=tuple(Ticket.from_json(row) for row in in_flight),
        on_commit=rounds.on_commit)
