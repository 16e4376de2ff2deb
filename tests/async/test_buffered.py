"""The buffered asynchronous loop on an in-process grid with nodes of different speeds
and a real store: one buffer of every node is a synchronous round, a stale reply gets
exactly its staleness weight, and one past max-staleness is rejected and recorded."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

from aggregation import ServerState, WeightedMean, adam, sgd
from aggregation.staleness import StalenessWeight
from coordinator.buffered import BufferedLoop, BufferSettings
from coordinator.grid import StreamingGrid
from coordinator.inflight import Ticket
from coordinator.journal import RunJournal
from coordinator.merge import Merge
from coordinator.payloads import packed_record, record_tensors
from coordinator.replies import ReplyValidator
from coordinator.rounds import RoundLoop
from coordinator.store import EvaluationRecord, make_session_factory, migrated_engine, repo
from coordinator.strategy import MergeStrategy
from tests.utils import replies as _identity  # noqa: F401 - Message() needs a task identity
from tests.utils.grids import ScriptedGrid
from tests.utils.ticking_grid import TickingGrid

NODES = [11, 12, 13]
TARGET = {11: [1.0, 2.0, 3.0], 12: [-1.0, 0.0, 4.0], 13: [0.5, 0.5, -0.5]}
EXAMPLES = {11: 10, 12: 30, 13: 20}


def _offset_towards_target(msg: Message) -> Message:
    """A client whose offset is half the way from theta to its target."""
    node = msg.metadata.dst_node_id
    theta = record_tensors(msg.content["arrays"])["w"].numpy()
    offset = (0.5 * (np.array(TARGET[node], np.float32) - theta)).astype(np.float32)
    return _reply(msg, offset)


def _reply(msg: Message, offset: np.ndarray) -> Message:
    node = msg.metadata.dst_node_id
    return Message(RecordDict({
        "arrays": ArrayRecord({"w": Array(offset)}),
        "metrics": MetricRecord({"num-examples": EXAMPLES.get(node, 10), "partition-id": 0}),
    }), reply_to=msg)


def _central(params) -> EvaluationRecord:
    return EvaluationRecord("central", float(params["w"].abs().sum()), 0.5, 7)


def _state(optimizer) -> ServerState:
    params = {"w": torch.zeros(3)}
    return ServerState(params, optimizer.init(params), 0)


@pytest.fixture
def journal(tmp_path: Path):
    with migrated_engine(f"sqlite:///{tmp_path / 'fedmerge.db'}") as engine:
        sessions = make_session_factory(engine)

        def new_run() -> RunJournal:
            with sessions.begin() as s:
                run_id = repo.create_run(s, name="t", config={}, mode="global",
                                         optimizer="sgd", combiner="mean",
                                         num_rounds_planned=1, out_dir=str(tmp_path))
            return RunJournal(sessions, run_id)

        yield new_run


def _buffered(grid, journal: RunJournal, tmp_path: Path, merge: Merge, **settings):
    return BufferedLoop(
        grid=grid, merge=merge, central=_central, journal=journal,
        checkpoint_dir=tmp_path / "ck-async", train_config=ConfigRecord({}),
        buffer=BufferSettings(**settings), timeout=60.0, min_interval=0.0, max_interval=0.0)


def _updates(journal: RunJournal):
    with journal.sessions() as s:
        return list(repo.updates_of(s, journal.run_id))


def test_one_buffer_of_every_node_is_a_synchronous_round(journal, tmp_path: Path) -> None:
    """M = K nodes, concurrency K, constant staleness: version 1 is round 1 (adam)."""
    optimizer = adam(lr=0.1)
    merge = Merge(ReplyValidator(), WeightedMean(), optimizer)
    sync = RoundLoop(
        grid=StreamingGrid(ScriptedGrid(NODES, _offset_towards_target)),
        strategy=MergeStrategy(fraction_evaluate=0.0, min_train_nodes=3,
                               min_evaluate_nodes=0, min_available_nodes=3),
        merge=merge, central=_central, journal=journal(),
        checkpoint_dir=tmp_path / "ck-sync", train_config=ConfigRecord({}),
        evaluate_config=ConfigRecord({}), timeout=60.0)
    sync_state, _ = sync.run(_state(optimizer), 1)

    # replies at different times, each node's first before any node's second
    grid = TickingGrid(NODES, _offset_towards_target, {11: 3, 12: 2, 13: 2})
    loop = _buffered(grid, journal(), tmp_path, merge, size=3, concurrency=3, min_nodes=3,
                     max_staleness=0, weight=StalenessWeight("constant"))
    async_state, central = loop.run(_state(optimizer), 1)

    assert async_state.round == sync_state.round == 1
    assert not torch.equal(async_state.params["w"], torch.zeros(3))
    torch.testing.assert_close(async_state.params["w"], sync_state.params["w"],
                               rtol=1e-6, atol=1e-7)
    for slot in ("m", "v"):
        torch.testing.assert_close(async_state.opt_state.slots[slot]["w"],
                                   sync_state.opt_state.slots[slot]["w"], rtol=1e-6, atol=1e-9)
    assert central.loss == pytest.approx(float(async_state.params["w"].abs().sum()))


FAST, SLOW = 21, 22


def _slow_moves_fast_stays(msg: Message) -> Message:
    """The fast node's offsets are 0, the slow node's 1: theta moves only by what the
    slow node's stale offsets are weighted."""
    fill = 1.0 if msg.metadata.dst_node_id == SLOW else 0.0
    return _reply(msg, np.full(3, fill, np.float32))


def _fast_and_slow(journal, tmp_path: Path, *, max_staleness: int):
    grid = TickingGrid([FAST, SLOW], _slow_moves_fast_stays, {FAST: 1, SLOW: 5})
    j = journal()
    loop = _buffered(grid, j, tmp_path, Merge(ReplyValidator(), WeightedMean(), sgd(lr=1.0)),
                     size=1, concurrency=2, min_nodes=2, max_staleness=max_staleness,
                     weight=StalenessWeight("polynomial", exponent=0.5))
    state, _ = loop.run(_state(sgd(lr=1.0)), 12)
    slow = [u for u in _updates(j) if u.node_id == str(SLOW)]
    return state, slow, grid


def test_a_stale_reply_gets_exactly_its_staleness_weight(journal, tmp_path: Path) -> None:
    state, slow, grid = _fast_and_slow(journal, tmp_path, max_staleness=100)
    assert slow and all(u.accepted for u in slow)
    taus = [u.metrics["staleness"] for u in slow]
    assert max(taus) >= 2  # old versions, so the weight is not 1
    for u in slow:
        tau = u.metrics["staleness"]
        assert u.metrics["base-version"] == u.round_number - 1 - tau
        assert u.metrics["staleness-weight"] == (1 + tau) ** -0.5
        assert u.metrics["weight"] == u.num_examples * (1 + tau) ** -0.5
    # sgd, lr 1, M = 1: each step adds s(tau) x the slow node's offset of ones
    expected = sum((1 + u.metrics["staleness"]) ** -0.5 for u in slow)
    torch.testing.assert_close(state.params["w"], torch.full((3,), expected), rtol=1e-6,
                               atol=1e-6)
    # each reply's node was sent the current theta again: the slow node trained again
    assert sum(m.metadata.dst_node_id == SLOW for m in grid.pushed) > len(slow)


def test_past_max_staleness_is_rejected_with_the_reason_and_recorded(
    journal, tmp_path: Path
) -> None:
    state, slow, _ = _fast_and_slow(journal, tmp_path, max_staleness=1)
    assert slow and not any(u.accepted for u in slow)
    for u in slow:
        assert u.metrics["staleness"] > 1
        assert "max-staleness 1" in u.reason and f"version {u.metrics['base-version']}" in u.reason
    torch.testing.assert_close(state.params["w"], torch.zeros(3))  # nothing of it merged


def test_replies_in_flight_before_a_resume_are_taken_or_refused_never_twice(
    journal, tmp_path: Path
) -> None:
    """Resumed at version 5 with three messages still at the grid: one whose update was
    merged before the crash, one too stale, one fresh enough."""
    grid = TickingGrid([FAST, SLOW], _slow_moves_fast_stays, {FAST: 1, SLOW: 1})
    theta = {"w": torch.zeros(3)}
    old = [grid.create_message(RecordDict({"arrays": packed_record(theta),
                                           "config": ConfigRecord({})}), "train", SLOW, "0")
           for _ in range(3)]
    ids = list(grid.push_messages(old))
    tickets = (Ticket(ids[0], SLOW, 5, occupies_node=False),
               Ticket(ids[1], SLOW, 1, occupies_node=False),
               Ticket(ids[2], SLOW, 4, occupies_node=False))
    j = journal()
    loop = BufferedLoop(
        grid=grid, merge=Merge(ReplyValidator(), WeightedMean(), sgd(lr=1.0)), central=_central,
        journal=j, checkpoint_dir=tmp_path / "ck", train_config=ConfigRecord({}),
        buffer=BufferSettings(size=2, concurrency=2, min_nodes=2, max_staleness=2,
                              weight=StalenessWeight("polynomial", exponent=0.5)),
        timeout=60.0, merged=frozenset({tickets[0].update_id}), resumed_in_flight=tickets,
        min_interval=0.0, max_interval=0.0)
    state = replace(_state(sgd(lr=1.0)), round=5)
    state, _ = loop.run(state, 6)

    by_id = {u.metrics["update-id"]: u for u in _updates(j)}
    merged_before, too_old, fresh = (by_id[t.update_id] for t in tickets)
    assert not merged_before.accepted and "already merged" in merged_before.reason
    assert not too_old.accepted and "max-staleness 2" in too_old.reason
    assert too_old.metrics["staleness"] == 4
    assert fresh.accepted and fresh.metrics["staleness"] == 1
    assert fresh.metrics["staleness-weight"] == 2 ** -0.5
    ids_merged = [u.metrics["update-id"] for u in by_id.values() if u.accepted]
    assert len(ids_merged) == 2 and tickets[0].update_id not in ids_merged
