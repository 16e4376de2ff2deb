"""federated-evaluation "folded": the clients evaluate the theta a train message carries
and reply with it, so a round is one exchange; round n+1's replies are recorded as the
evaluation of theta_n, the last theta gets one evaluate exchange, and a redone round
replaces what its first attempt recorded."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Context,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)

import tests.utils.replies  # noqa: F401  (stamps a TaskIdentity so Message() works here)
from aggregation import ServerState, WeightedMean, sgd
from client.client_app import app as client_app
from coordinator.config import parse_run_config
from coordinator.federation import run_federation
from coordinator.grid import StreamingGrid
from coordinator.journal import RunJournal
from coordinator.merge import Merge
from coordinator.payloads import record_tensors
from coordinator.replies import ReplyValidator
from coordinator.rounds import RoundLoop
from coordinator.store import (
    EvaluationRecord,
    make_engine,
    make_session_factory,
    repo,
)
from coordinator.strategy import MergeStrategy
from tests.utils.grids import ScriptedGrid

NODES = [21, 22, 23]
STEP = np.array([0.5, -1.0, 2.0], np.float32)


# ---- the round loop on a scripted grid -----------------------------------------------


def _scripted(msg: Message) -> Message:
    """A client whose evaluation of theta is its sum (as loss), folded or not."""
    node = msg.metadata.dst_node_id
    theta_sum = float(record_tensors(msg.content["arrays"])["w"].sum())
    evaluation = {"eval-loss": theta_sum + node, "eval-acc": 0.5,
                  "partition-id": NODES.index(node)}
    if msg.metadata.message_type == MessageType.TRAIN:
        content = RecordDict({
            "arrays": ArrayRecord({"w": Array(STEP)}),
            "metrics": MetricRecord({"num-examples": 10, "eval-num-examples": 4,
                                     **evaluation}),
        })
    else:
        content = RecordDict({"metrics": MetricRecord({"num-examples": 4, **evaluation})})
    return Message(content, reply_to=msg)


def _loop(tmp_path: Path, store, grid: ScriptedGrid) -> RoundLoop:
    sessions, run_id = store
    return RoundLoop(
        grid=StreamingGrid(grid, min_interval=0.0),
        strategy=MergeStrategy(min_available_nodes=3, min_train_nodes=3, min_evaluate_nodes=3),
        merge=Merge(ReplyValidator(), WeightedMean(), sgd(lr=1.0)),
        central=lambda p: EvaluationRecord("central", float(p["w"].sum()), 0.25, 7),
        journal=RunJournal(sessions, run_id), checkpoint_dir=tmp_path / "ck",
        train_config=ConfigRecord({}), evaluate_config=ConfigRecord({}), timeout=5.0,
        evaluation="folded",
    )


def _state(round_number: int = 0) -> ServerState:
    params = {"w": torch.from_numpy(round_number * STEP)}
    return ServerState(params, sgd(lr=1.0).init(params), round_number)


def _federated(store) -> dict[int, list[float]]:
    """round -> the losses of its federated evaluations (one each, if all is well)."""
    sessions, run_id = store
    with sessions() as s:
        evals = repo.evaluations_of(s, run_id)
    out: dict[int, list[float]] = {}
    for e in evals:
        if e.kind == "federated":
            out.setdefault(e.round_number, []).append(e.loss)
    return out


def _theta_loss(round_number: int) -> float:
    """The federated loss the scripted clients give theta_n: sum(theta_n) + mean node."""
    return float(round_number * STEP.sum()) + float(np.mean(NODES))


def test_a_folded_round_sends_one_message_per_sampled_node(tmp_path, store) -> None:
    grid = ScriptedGrid(NODES, _scripted, per_pull=2)
    state, _ = _loop(tmp_path, store, grid).run(_state(), 3)
    assert state.round == 3
    kinds = [(m.metadata.message_type, m.metadata.dst_node_id) for m in grid.pushed]
    rounds = [kinds[i:i + 3] for i in range(0, 9, 3)]
    for sent in rounds:  # each round: one train message to each node, nothing else
        assert sorted(sent) == [(MessageType.TRAIN, n) for n in NODES]
    # the last theta, which no train round carries, gets one evaluate exchange
    assert sorted(kinds[9:]) == [(MessageType.EVALUATE, n) for n in NODES]
    # round n+1's replies are recorded as theta_n's evaluation, under round n
    fed = _federated(store)
    assert sorted(fed) == [0, 1, 2, 3]
    for n, losses in fed.items():
        assert losses == [pytest.approx(_theta_loss(n))], n


def test_a_redone_round_replaces_the_evaluation_its_first_attempt_recorded(
    tmp_path, store
) -> None:
    grid = ScriptedGrid(NODES, _scripted, per_pull=3)
    _loop(tmp_path, store, grid).run(_state(), 2)
    sessions, run_id = store
    with sessions.begin() as s:  # resume falls back to round 1's checkpoint
        repo.discard_rounds_after(s, run_id, 1)
    state, _ = _loop(tmp_path, store, grid).run(_state(1), 3)
    assert state.round == 3
    fed = _federated(store)
    assert sorted(fed) == [0, 1, 2, 3]
    assert all(len(losses) == 1 for losses in fed.values()), fed
    # resumed once more with nothing left to do: the last theta's evaluation is there
    pushed = len(grid.pushed)
    _loop(tmp_path, store, grid).run(state, 3)
    assert len(grid.pushed) == pushed


# ---- the real ClientApp, in process: folded and separate agree -----------------------


def _client_grid(num: int) -> ScriptedGrid:
    """Flower's ClientApp (client/client_app.py) answering in process, one Context (its
    state) per node, replies in node order."""
    nodes = list(range(1, num + 1))
    contexts = {n: Context(run_id=1, node_id=n, state=RecordDict(), run_config={},
                           node_config={"partition-id": n - 1, "num-partitions": num})
                for n in nodes}
    return ScriptedGrid(nodes, lambda m: client_app(m, contexts[m.metadata.dst_node_id]),
                        per_pull=num, order=nodes)


def _evaluations(db_url: str, run_id: str) -> dict[tuple[int, str], EvaluationRecord]:
    engine = make_engine(db_url)
    with make_session_factory(engine)() as s:
        rows = list(repo.evaluations_of(s, run_id))
    engine.dispose()
    return {(e.round_number, e.kind): e for e in rows if e.kind != "central"}


@pytest.mark.parametrize("mode", ["global", "personal"])
def test_folded_evaluation_records_what_the_separate_exchange_does(
    tmp_path: Path, mode: str
) -> None:
    runs = {}
    for how in ("separate", "folded"):
        cfg = parse_run_config({
            "num-server-rounds": 2, "num-clients": 3, "min-nodes": 3, "local-epochs": 1,
            "device": "cpu", "mode": mode, "lam": 0.1, "federated-evaluation": how,
            "out-dir": str(tmp_path / how),
        })
        result = run_federation(_client_grid(3), cfg)
        runs[how] = _evaluations(result.db_url, result.run_id)
    separate, folded = runs["separate"], runs["folded"]
    kinds = ["federated"] + (["personalized"] if mode == "personal" else [])
    assert sorted(separate) == [(n, k) for n in (1, 2) for k in kinds]
    # folded has the initial model's evaluation too (round 1's replies carry it)
    assert (0, "federated") in folded
    for key, want in separate.items():
        got = folded[key]
        assert got.num_examples == want.num_examples > 0, key
        assert got.loss == pytest.approx(want.loss, rel=1e-6), key
        assert got.accuracy == pytest.approx(want.accuracy, abs=1e-9), key
        if key[1] == "federated":
            assert got.metrics["clients"].keys() == want.metrics["clients"].keys()
            for pid, row in want.metrics["clients"].items():
                assert got.metrics["clients"][pid] == pytest.approx(row, rel=1e-6), pid
