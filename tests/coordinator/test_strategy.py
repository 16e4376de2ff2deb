"""The merge on fake replies: the merge, the rejections, what each round reports."""

from __future__ import annotations

import gc
import weakref

import numpy as np
import pytest
import torch
from flwr.serverapp.strategy import FedAvg

from aggregation import adam, make_combiner
from tests.utils.replies import error_reply, reply
from tests.utils.strategies import MergeHarness, Recorder
from tests.utils.strategies import make_strategy as make_theta_strategy

rng = np.random.default_rng(0)
THETA = {
    "w": rng.normal(size=(4, 3)).astype(np.float32),
    "b": rng.normal(size=3).astype(np.float32),
}


def make_strategy(optimizer=None, combiner=None, **kw) -> tuple[MergeHarness, Recorder]:
    return make_theta_strategy(THETA, optimizer, combiner, **kw)


def replies_for(arrays: list[dict[str, np.ndarray]], examples: list[int] | None = None) -> list:
    examples = examples or [10] * len(arrays)
    return [reply(a, examples=n, node=i + 1)
            for i, (a, n) in enumerate(zip(arrays, examples, strict=True))]


def offsets(k: int) -> list[dict[str, np.ndarray]]:
    return [{n: rng.normal(size=v.shape).astype(np.float32) for n, v in THETA.items()}
            for _ in range(k)]


def test_sgd_lr1_equals_flowers_fedavg_on_the_same_replies() -> None:
    offs, examples = offsets(5), [10, 50, 7, 33, 100]
    strategy, _ = make_strategy()
    arrays, metrics = strategy.aggregate_train(1, replies_for(offs, examples))
    models = [{k: THETA[k] + o[k] for k in THETA} for o in offs]
    flower, _ = FedAvg().aggregate_train(1, replies_for(models, examples))
    for k in THETA:
        ours = arrays[k].numpy()
        assert ours.dtype == np.float32
        np.testing.assert_allclose(ours, flower[k].numpy(), atol=1e-6)
    assert metrics["num-examples"] == sum(examples)


def test_bad_replies_are_skipped_and_the_round_goes_on() -> None:
    good = offsets(2)
    bad_nan = {**good[0], "b": np.array([np.nan, 0, 0], np.float32)}
    replies = [
        reply(good[0], examples=10, node=1),
        reply(bad_nan, examples=10, node=2),
        reply({"w": good[0]["w"]}, examples=10, node=3),  # missing tensor
        reply({**good[0], "w": np.zeros((3, 4), np.float32)}, node=4),  # wrong shape
        reply(good[0], examples=0, node=5),
        error_reply(6, "CUDA out of memory"),
        reply(good[1], examples=30, node=7),
    ]
    strategy, rec = make_strategy()
    arrays, _ = strategy.aggregate_train(1, replies)
    expected = {k: THETA[k] + (10 * good[0][k] + 30 * good[1][k]) / 40 for k in THETA}
    for k in THETA:
        np.testing.assert_allclose(arrays[k].numpy(), expected[k], atol=1e-6)
    report = rec.reports[-1]
    reasons = {c.node_id: c.reason for c in report.clients if not c.accepted}
    assert set(reasons) == {"2", "3", "4", "5", "6"}
    assert "non-finite" in reasons["2"] and "missing" in reasons["3"]
    assert "shape" in reasons["4"] and "num-examples" in reasons["5"]
    assert "CUDA out of memory" in reasons["6"]
    assert report.accepted == 2 and strategy.state.round == 1


def test_no_accepted_update_leaves_theta_unchanged() -> None:
    strategy, rec = make_strategy()
    arrays, metrics = strategy.aggregate_train(1, [error_reply(1, "boom")])
    assert arrays is None and metrics is None
    for k in THETA:
        np.testing.assert_array_equal(strategy.state.params[k].numpy(), THETA[k])
    assert strategy.state.round == 1 and rec.reports[-1].accepted == 0


def test_norm_bound_relative_to_the_round_median() -> None:
    offs = offsets(4)
    huge = {k: 100 * v for k, v in offs[0].items()}
    strategy, rec = make_strategy(max_norm_ratio=3.0)
    strategy.aggregate_train(1, replies_for([*offs, huge]))
    rejected = [c for c in rec.reports[-1].clients if not c.accepted]
    assert [c.node_id for c in rejected] == ["5"]
    assert "x the round's median" in rejected[0].reason


def test_adam_keeps_float32_and_counts_its_own_steps() -> None:
    strategy, _ = make_strategy(optimizer=adam(lr=0.1))
    for r in (1, 2, 3):
        arrays, _ = strategy.aggregate_train(r, replies_for(offsets(3)))
        assert all(arrays[k].numpy().dtype == np.float32 for k in THETA)
    assert strategy.state.opt_state.step == 3
    assert all(t.dtype == torch.float32 for t in strategy.state.opt_state.slots["v"].values())


@pytest.mark.parametrize("name", ["median", "trimmed-mean", "multi-krum"])
def test_robust_combiners_ignore_one_hostile_client(name: str) -> None:
    base = offsets(1)[0]
    honest = [{k: v + 0.01 * rng.normal(size=v.shape).astype(np.float32) for k, v in base.items()}
              for _ in range(6)]
    hostile = {k: -10 * v for k, v in base.items()}
    strategy, _ = make_strategy(combiner=make_combiner(name, trim_beta=0.2, byzantine=1))
    arrays, _ = strategy.aggregate_train(1, replies_for([*honest, hostile]))
    for k in THETA:
        np.testing.assert_allclose(arrays[k].numpy(), THETA[k] + base[k], atol=0.05)


def test_streaming_merge_holds_one_reply_at_a_time() -> None:
    """Memory O(model), not O(clients x model): while reply i + 1 is made, at most reply i
    is still referred to (the one just merged), never an earlier one."""
    alive: list[weakref.ref] = []

    def lazy_replies():
        for i, o in enumerate(offsets(6)):
            gc.collect()
            assert sum(ref() is not None for ref in alive[:-1]) == 0, "an old reply is held"
            msg = reply(o, node=i + 1)
            alive.append(weakref.ref(msg))
            yield msg
            del msg

    strategy, rec = make_strategy()
    strategy.aggregate_train(1, lazy_replies())
    assert rec.reports[-1].accepted == 6


def test_rejected_offsets_leave_no_trace_and_every_merged_norm_is_recorded() -> None:
    good = offsets(2)
    nan = {**good[0], "b": np.array([0, np.nan, 0], np.float32)}
    inf = {**good[0], "w": np.full((4, 3), np.inf, np.float32)}
    big = {k: np.full_like(v, 100.0) for k, v in THETA.items()}
    from coordinator.replies import UpdateLimits

    strategy, rec = make_strategy(limits=UpdateLimits(max_update_norm=50.0))
    arrays, _ = strategy.aggregate_train(1, [
        reply(good[0], examples=2, node=1), reply(nan, node=2), reply(inf, node=3),
        reply(big, node=4), reply(good[1], examples=5, node=5),
    ])
    clean, _ = make_strategy()[0].aggregate_train(1, replies_for(good, [2, 5]))
    for k in THETA:  # bit for bit: a rejected offset touched nothing
        np.testing.assert_array_equal(arrays[k].numpy(), clean[k].numpy())
    report = rec.reports[-1]
    reasons = {c.node_id: c.reason for c in report.clients if not c.accepted}
    assert "non-finite" in reasons["2"] and "non-finite" in reasons["3"]
    assert "exceeds max-update-norm 50.0" in reasons["4"]
    norms = {c.node_id: c.offset_norm for c in report.clients if c.accepted}
    for node, o in (("1", good[0]), ("5", good[1])):
        expected = np.sqrt(sum(float(np.square(v.astype(np.float64)).sum()) for v in o.values()))
        assert norms[node] == pytest.approx(expected, rel=1e-6)
