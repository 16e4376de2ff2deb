"""aggregation/pseudo_grad.py: g = -scale * sum_i w_i theta_i, and the invariant built on
it: server SGD with lr = 1 on the mean offset is FedAvg, both by hand and against
Flower's own FedAvg strategy on the same reply Messages."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAvg
from flwr.supercore.task_identity import TaskIdentity

from aggregation import ClientUpdate, Params, WeightedMean, objective_gradient, sgd


def test_hand_computed_two_clients() -> None:
    # theta = [1, 2, 3]; client A's model [2, 2, 2] (1 example), B's [4, 0, 3] (3 examples).
    # Offsets (client - global): A = [1, 0, -1], B = [3, -2, 0].
    # Mean offset = (1 * A + 3 * B) / 4 = [2.5, -1.5, -0.25]; g = -mean = [-2.5, 1.5, 0.25].
    # theta - g = [3.5, 0.5, 2.75] = (1 * [2, 2, 2] + 3 * [4, 0, 3]) / 4, FedAvg.
    theta = {"w": torch.tensor([1.0, 2.0, 3.0])}
    updates = [
        ClientUpdate({"w": torch.tensor([1.0, 0.0, -1.0])}, weight=1),
        ClientUpdate({"w": torch.tensor([3.0, -2.0, 0.0])}, weight=3),
    ]
    mean = WeightedMean().combine(updates, theta).offset
    g = objective_gradient(mean, scale=1.0)
    assert torch.equal(g["w"], torch.tensor([-2.5, 1.5, 0.25]))
    opt = sgd(lr=1.0)
    opt.step(theta, g, opt.init(theta))
    assert torch.equal(theta["w"], torch.tensor([3.5, 0.5, 2.75]))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_scale_sign_in_place_and_dtype(dtype: torch.dtype) -> None:
    mean = {"a": torch.tensor([1.0, -2.0, 0.5], dtype=dtype), "b": torch.ones(2, 2, dtype=dtype)}
    expected = {k: -2.0 * t.double() for k, t in mean.items()}  # scale = lam = 2
    ptrs = {k: t.data_ptr() for k, t in mean.items()}
    g = objective_gradient(mean, scale=2.0)
    assert g is mean  # computed in place, documented
    for k, t in g.items():
        assert t.dtype == dtype and t.data_ptr() == ptrs[k]
        torch.testing.assert_close(t.double(), expected[k])


def test_empty_offset() -> None:
    assert objective_gradient({}, scale=3.0) == {}


# --- FedAvg, by hand and against Flower ------------------------------------------------


def random_models(seed: int) -> tuple[Params, list[Params], list[int]]:
    gen = torch.Generator().manual_seed(seed)
    shapes = {"conv.weight": (4, 3, 3), "fc.weight": (5, 7), "fc.bias": (5,)}
    theta = {k: torch.randn(s, generator=gen) for k, s in shapes.items()}
    k = 3 + seed % 3
    models = [
        {n: t + 0.5 * torch.randn(t.shape, generator=gen) for n, t in theta.items()}
        for _ in range(k)
    ]
    examples = [int(x) for x in torch.randint(1, 1000, (k,), generator=gen)]
    return theta, models, examples


def server_sgd_lr1(theta: Params, models: list[Params], examples: list[int]) -> Params:
    """The coordinator's path: offsets (client - global) -> WeightedMean -> g -> SGD(lr=1)."""
    theta = {k: t.clone() for k, t in theta.items()}
    updates = [
        ClientUpdate({k: m[k] - theta[k] for k in theta}, weight=n)
        for m, n in zip(models, examples, strict=True)
    ]
    opt = sgd(lr=1.0)
    state = opt.init(theta)
    ptrs = {k: t.data_ptr() for k, t in theta.items()}
    g = objective_gradient(WeightedMean().combine(updates, theta).offset, scale=1.0)
    state = opt.step(theta, g, state)
    assert state.step == 1
    assert {k: t.data_ptr() for k, t in theta.items()} == ptrs  # updated in place
    return theta


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_sgd_lr1_is_examples_weighted_mean_of_models(seed: int) -> None:
    theta, models, examples = random_models(seed)
    merged = server_sgd_lr1(theta, models, examples)
    total = sum(examples)
    for k in theta:
        expected = sum(n / total * m[k].double() for m, n in zip(models, examples, strict=True))
        assert merged[k].dtype == torch.float32
        torch.testing.assert_close(merged[k].double(), expected, rtol=0, atol=1e-6)


@pytest.fixture
def flwr_task_identity(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Message() needs a task identity; set it for this test only, and quieten flwr's
    INFO logging of aggregate_train."""
    monkeypatch.setattr(TaskIdentity, "_run_id", 1)
    monkeypatch.setattr(TaskIdentity, "_node_id", 1)
    monkeypatch.setattr(TaskIdentity, "_task_id", 1)
    logger = logging.getLogger("flwr")
    level = logger.level
    logger.setLevel(logging.WARNING)
    yield
    logger.setLevel(level)


def reply(model: Params, examples: int, node: int) -> Message:
    arrays = ArrayRecord({k: Array(t.numpy()) for k, t in model.items()})
    metrics = MetricRecord({"num-examples": examples})
    return Message(
        RecordDict({"arrays": arrays, "metrics": metrics}),
        dst_node_id=node,
        message_type=MessageType.TRAIN,
    )


@pytest.mark.usefixtures("flwr_task_identity")
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sgd_lr1_equals_flower_fedavg(seed: int) -> None:
    theta, models, examples = random_models(seed)
    replies = [reply(m, n, 10 + i) for i, (m, n) in enumerate(zip(models, examples, strict=True))]
    arrays, _ = FedAvg().aggregate_train(1, replies)
    assert arrays is not None
    merged = server_sgd_lr1(theta, models, examples)
    assert set(arrays.keys()) == set(merged)
    for k, t in merged.items():
        theirs = arrays[k].numpy()
        assert theirs.dtype == np.float32 and t.dtype == torch.float32
        np.testing.assert_allclose(t.numpy(), theirs, rtol=0, atol=1e-6)
