"""The round loop on an in-process grid and a real store: a round is committed once, only
after its checkpoint is on disk, and a round whose evaluation fails is not committed."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Error,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)

from aggregation import ServerState, WeightedMean, sgd
from coordinator.checkpoints import load_checkpoint
from coordinator.grid import StreamingGrid
from coordinator.journal import RunJournal
from coordinator.merge import Merge
from coordinator.replies import ReplyValidator
from coordinator.rounds import RoundLoop
from coordinator.store import (
    EvaluationRecord,
    RoundRecord,
    repo,
)
from coordinator.strategy import MergeStrategy
from tests.utils import replies as _identity  # noqa: F401 - Message() needs a task identity
from tests.utils.grids import ScriptedGrid

NODES = [21, 22, 23]
STEP = np.array([0.5, -1.0, 2.0], np.float32)  # every client's offset, every round


def _answer(msg: Message) -> Message:
    node = msg.metadata.dst_node_id
    if msg.metadata.message_type == MessageType.TRAIN:
        content = RecordDict({
            "arrays": ArrayRecord({"w": Array(STEP)}),
            "metrics": MetricRecord({"num-examples": 10, "partition-id": NODES.index(node)}),
        })
    else:
        content = RecordDict({"metrics": MetricRecord({
            "num-examples": 10, "eval-acc": 0.5, "eval-loss": 1.0,
            "partition-id": NODES.index(node)})})
    return Message(content, reply_to=msg)


class CheckingJournal(RunJournal):
    """The real journal, noting at each commit whether the round's checkpoint exists."""

    def __init__(self, *args) -> None:
        super().__init__(*args)
        self.commits: list[tuple[int, bool]] = []

    def commit(self, record: RoundRecord, events=()) -> None:
        on_disk = record.checkpoint_path is not None and Path(record.checkpoint_path).is_file()
        self.commits.append((record.number, on_disk))
        super().commit(record, events)


def _central(params) -> EvaluationRecord:
    return EvaluationRecord("central", float(params["w"].sum()), 0.25, 7)


def _loop(tmp_path: Path, store, central=_central, grid=None) -> RoundLoop:
    sessions, run_id = store
    grid = grid or ScriptedGrid(NODES, _answer, per_pull=2)
    opt = sgd(lr=1.0)
    return RoundLoop(
        grid=StreamingGrid(grid, min_interval=0.0),
        strategy=MergeStrategy(min_available_nodes=3, min_train_nodes=3, min_evaluate_nodes=3),
        merge=Merge(ReplyValidator(), WeightedMean(), opt),
        central=central, journal=CheckingJournal(sessions, run_id),
        checkpoint_dir=tmp_path / "ck", train_config=ConfigRecord({}),
        evaluate_config=ConfigRecord({}), timeout=5.0,
    )


def _state() -> ServerState:
    params = {"w": torch.zeros(3)}
    return ServerState(params, sgd(lr=1.0).init(params), 0)


def test_each_round_is_committed_once_and_only_after_its_checkpoint(tmp_path, store) -> None:
    loop = _loop(tmp_path, store)
    state, central = loop.run(_state(), 3)
    assert loop.journal.commits == [(1, True), (2, True), (3, True)]
    assert state.round == 3
    torch.testing.assert_close(state.params["w"], torch.from_numpy(3 * STEP))
    assert central.loss == pytest.approx(float(3 * STEP.sum()))
    sessions, run_id = store
    with sessions() as s:
        rounds = repo.rounds_of(s, run_id)
        evals = repo.evaluations_of(s, run_id)
        updates = repo.updates_of(s, run_id)
    assert [(r.number, r.status, r.attempts) for r in rounds] == [
        (1, "committed", 1), (2, "committed", 1), (3, "committed", 1)]
    ck = load_checkpoint(Path(rounds[-1].checkpoint_path), rounds[-1].checkpoint_sha256)
    torch.testing.assert_close(ck.params["w"], state.params["w"])
    kinds = sorted((e.round_number, e.kind) for e in evals)
    assert kinds == [(0, "central")] + [(n, k) for n in (1, 2, 3) for k in ("central", "federated")]
    # every update under the node its request went to
    assert sorted({u.node_id for u in updates}) == [str(n) for n in NODES]
    assert len(updates) == 9 and all(u.accepted for u in updates)


@pytest.mark.parametrize("failing", ["central", "federated"])
def test_a_failed_evaluation_commits_no_half_round(tmp_path, store, failing: str) -> None:
    calls = {"central": 0}

    def central(params) -> EvaluationRecord:
        calls["central"] += 1
        if failing == "central" and calls["central"] == 3:  # initial, round 1, round 2
            raise RuntimeError("evaluation failed")
        return _central(params)

    pulls = {"evaluate": 0}

    class FailingEvaluate(ScriptedGrid):
        def pull_messages(self, message_ids):
            out = list(super().pull_messages(message_ids))
            kinds = {m.metadata.message_type for m in out}
            if failing == "federated" and MessageType.EVALUATE in kinds:
                pulls["evaluate"] += 1
                if pulls["evaluate"] > 2:  # round 1's two pulls pass, round 2's fail
                    raise ConnectionError("evaluate replies lost")
            return out

    loop = _loop(tmp_path, store, central=central,
                 grid=FailingEvaluate(NODES, _answer, per_pull=2))
    with pytest.raises((RuntimeError, ConnectionError)):
        loop.run(_state(), 3)
    assert loop.journal.commits == [(1, True)]
    sessions, run_id = store
    with sessions() as s:
        rounds = repo.rounds_of(s, run_id)
        evals = repo.evaluations_of(s, run_id)
        updates = repo.updates_of(s, run_id)
    assert [(r.number, r.status) for r in rounds] == [(1, "committed"), (2, "running")]
    assert all(e.round_number < 2 for e in evals) and all(u.round_number == 1 for u in updates)
    assert not (tmp_path / "ck" / "round-00002.safetensors").exists()


def test_a_crashed_clients_error_reply_is_recorded_under_the_node_it_was_sent_to(
    tmp_path, store
) -> None:
    def crash_23(msg: Message) -> Message:
        if msg.metadata.dst_node_id != 23 or msg.metadata.message_type != MessageType.TRAIN:
            return _answer(msg)
        reply = Message(Error(code=0, reason="ClientApp crashed"), reply_to=msg)
        reply.metadata.__dict__["_src_node_id"] = 1  # not the node: what Flower may stamp
        return reply

    loop = _loop(tmp_path, store, grid=ScriptedGrid(NODES, crash_23))
    state, record = loop.run_round(_state())
    by_node = {u.node_id: u for u in record.updates}
    assert set(by_node) == {"21", "22", "23"}
    assert not by_node["23"].accepted and "ClientApp crashed" in by_node["23"].reason
    torch.testing.assert_close(state.params["w"], torch.from_numpy(STEP))


class StampingJournal(CheckingJournal):
    """Notes when each commit returned."""

    def __init__(self, *args) -> None:
        super().__init__(*args)
        self.committed_at: dict[int, datetime] = {}

    def commit(self, record: RoundRecord, events=()) -> None:
        super().commit(record, events)
        self.committed_at[record.number] = datetime.now(UTC)


def test_a_rounds_recorded_time_includes_its_commit(tmp_path, store) -> None:
    sessions, run_id = store
    loop = replace(_loop(tmp_path, store), journal=StampingJournal(sessions, run_id))
    loop.run(_state(), 2)
    with sessions() as s:
        rows = {r.number: r for r in repo.committed_rounds(s, run_id)}
    for number, committed in loop.journal.committed_at.items():
        finished = rows[number].finished_at.replace(tzinfo=UTC)
        assert finished >= committed, number
