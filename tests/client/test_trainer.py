"""client/trainer.py: the local offset, the proximal term, determinism, the Fisher."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from client.data import PartitionSpec, load_partition
from client.models import build_model
from client.trainer import diagonal_fisher, evaluate, load_params, train_offset

CPU = torch.device("cpu")
FC2 = ["fc2.weight", "fc2.bias"]


@pytest.fixture(scope="module")
def part():
    return load_partition(PartitionSpec("iid", 5, seed=0), 0)


def theta_of(seed: int = 0) -> dict[str, torch.Tensor]:
    return {k: t.detach().clone() for k, t in build_model("mlp", seed=seed).state_dict().items()}


def train(part, theta, **kw):
    model = build_model("mlp")
    options = {"epochs": 1, "lr": 0.1, "batch_size": 32, "proximal": 0.0, "device": CPU,
               "seed": 5, **kw}
    return model, train_offset(model, theta, part.x_train, part.y_train, **options)


def norm(offset: dict[str, torch.Tensor]) -> float:
    return float(torch.sqrt(sum(t.double().square().sum() for t in offset.values())))


def test_the_offset_is_the_trained_model_minus_theta(part) -> None:
    theta = theta_of()
    model, result = train(part, theta)
    assert list(result.offset) == list(theta)
    trained = model.state_dict()
    for k, t in result.offset.items():
        assert t.dtype == torch.float32 and t.device.type == "cpu"
        torch.testing.assert_close(theta[k] + t, trained[k], rtol=0, atol=1e-6)
        assert t.abs().max() > 0
    assert result.steps == -(-len(part.y_train) // 32) and np.isfinite(result.loss)
    # theta itself is left as it was (the anchor is not trained in place)
    for k, t in theta_of().items():
        assert torch.equal(theta[k], t)


def test_only_the_trainable_tensors_move_and_are_sent(part) -> None:
    theta = theta_of()
    model, result = train(part, theta, trainable=FC2)
    assert sorted(result.offset) == sorted(FC2)
    trained = model.state_dict()
    for k in ("fc1.weight", "fc1.bias"):
        assert torch.equal(trained[k], theta[k])
    for k in FC2:
        torch.testing.assert_close(theta[k] + result.offset[k], trained[k], rtol=0, atol=1e-6)
        assert result.offset[k].abs().max() > 0


def test_the_proximal_term_shrinks_the_offset(part) -> None:
    theta = theta_of()
    norms = [norm(train(part, theta, epochs=3, proximal=c)[1].offset) for c in (0.0, 1.0, 10.0)]
    assert norms[0] > norms[1] > norms[2] > 0


def test_the_same_seed_gives_the_same_offset_bit_for_bit(part) -> None:
    theta = theta_of()
    a, b = train(part, theta, seed=11)[1], train(part, theta, seed=11)[1]
    c = train(part, theta, seed=12)[1]
    assert all(torch.equal(a.offset[k], b.offset[k]) for k in theta)
    assert a.loss == b.loss
    assert not all(torch.equal(a.offset[k], c.offset[k]) for k in theta)


def test_a_warm_start_continues_from_the_given_offset(part) -> None:
    theta = theta_of()
    first = train(part, theta)[1].offset
    _, warm = train(part, theta, lr=1e-12, warm_offset=first)  # barely moves from there
    for k in theta:
        torch.testing.assert_close(warm.offset[k], first[k], rtol=0, atol=1e-6)


def test_training_lowers_the_local_loss(part) -> None:
    theta = theta_of()
    before, _ = evaluate(load_params(build_model("mlp"), theta), part.x_train, part.y_train, CPU)
    model, _ = train(part, theta, epochs=5)
    after, _ = evaluate(model, part.x_train, part.y_train, CPU)
    assert after < before


def per_example_fisher(
    model: nn.Module, x: np.ndarray, y: np.ndarray, names: list[str] | None = None
) -> dict[str, torch.Tensor]:
    """mean_j (d/dp log-loss of example j)^2, one backward pass per example."""
    params = {n: p for n, p in model.named_parameters() if names is None or n in names}
    total = {n: torch.zeros_like(p, dtype=torch.float64) for n, p in params.items()}
    for xi, yi in zip(x, y, strict=True):
        model.zero_grad()
        logits = model(torch.from_numpy(xi[None]))  # (1, 10)
        nn.functional.cross_entropy(logits, torch.tensor([int(yi)])).backward()
        for n, p in params.items():
            total[n] += p.grad.double().square()
    return {n: (t / len(y)).float() for n, t in total.items()}


def test_diagonal_fisher_equals_a_per_example_loop(part) -> None:
    model, _ = train(part, theta_of())  # a trained model, not the initial one
    x, y = part.x_train[:40], part.y_train[:40]
    got = diagonal_fisher(model, x, y, CPU, max_examples=len(y))
    want = per_example_fisher(model, x, y)
    assert sorted(got) == sorted(want)
    for k in want:
        assert got[k].dtype == torch.float32 and got[k].shape == want[k].shape
        torch.testing.assert_close(got[k], want[k], rtol=1e-4, atol=1e-9)
        assert (got[k] >= 0).all()


def test_diagonal_fisher_of_some_tensors_on_a_sample(part) -> None:
    model = load_params(build_model("mlp"), theta_of())
    x, y = part.x_train, part.y_train
    got = diagonal_fisher(model, x, y, CPU, names=FC2, max_examples=16, seed=3)
    assert sorted(got) == sorted(FC2)
    # The sample is the first 16 of a seeded permutation of the examples.
    idx = np.random.default_rng(3).permutation(len(x))[:16]
    want = per_example_fisher(model, x[idx], y[idx], names=FC2)
    for k in FC2:
        torch.testing.assert_close(got[k], want[k], rtol=1e-4, atol=1e-9)
    same = diagonal_fisher(model, x, y, CPU, names=FC2, max_examples=16, seed=3)
    assert all(torch.equal(got[k], same[k]) for k in FC2)


class _WithIdle(nn.Module):
    """A linear classifier plus a tensor the loss does not depend on (its gradient is an
    exact zero): only the proximal term moves it, so its offset is known in closed form."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(6, 3)
        self.idle = nn.Parameter(torch.zeros(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(x) + 0.0 * self.idle.sum()


@pytest.mark.parametrize("c", [0.0, 0.3, 1.7])
def test_the_proximal_term_is_c_times_the_offset_exactly(c: float) -> None:
    """The local loss is L_i(x) + (c/2)||x - theta||^2, whose gradient in theta_i is
    grad L_i + c theta_i. Where grad L_i = 0, each SGD step is theta_i <- (1 - lr c) theta_i:
    after n steps a warm offset o becomes (1 - lr c)^n o, the inner problem's optimum
    (0) approached at exactly that rate. Half the coefficient would give (1 - lr c/2)^n."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(50, 6, generator=gen).numpy()
    y = torch.randint(0, 3, (50,), generator=gen).numpy()
    model = _WithIdle()
    theta = {k: t.detach().clone() for k, t in model.state_dict().items()}
    warm = {"idle": torch.tensor([1.0, -2.0, 0.5, 3.0])}
    lr, epochs, batch = 0.2, 3, 16
    result = train_offset(model, theta, x, y, epochs=epochs, lr=lr, batch_size=batch,
                          proximal=c, device=CPU, seed=1, warm_offset=warm)
    steps = epochs * -(-len(y) // batch)
    assert result.steps == steps
    expected = (1.0 - lr * c) ** steps * warm["idle"]
    torch.testing.assert_close(result.offset["idle"], expected, rtol=1e-5, atol=1e-7)
    assert result.offset["lin.weight"].abs().max() > 0  # the loss did train the rest
