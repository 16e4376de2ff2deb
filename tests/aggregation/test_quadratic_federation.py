"""The "check that cannot be argued with" of docs/design.md: a federation of exact
quadratic clients, L_i(x) = 1/2 (x - c_i)^T A_i (x - c_i), driven round by round through
the real coordinator math (ClientUpdate -> WeightedMean -> objective_gradient ->
ServerOptimizer.step), must converge to theta* = (sum_i w_i M_i)^-1 sum_i w_i M_i c_i."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
from torch import Tensor

from aggregation import (
    ClientUpdate,
    Params,
    ServerOptimizer,
    WeightedMean,
    adagrad,
    adam,
    momentum,
    objective_gradient,
    sgd,
    yogi,
)
from aggregation.objective import quadratic_global_optimum, quadratic_inner_optimum

DT = torch.float64
LAMS = [0.5, 2.0]
SEEDS = [0, 1, 2]


@dataclass(frozen=True)
class Federation:
    a: list[Tensor]  # K x (d, d), SPD
    c: list[Tensor]  # K x (d,)
    m: list[float]  # examples per client, unequal
    lam: float

    @property
    def w(self) -> list[float]:
        total = sum(self.m)
        return [x / total for x in self.m]


def federation(seed: int, lam: float) -> Federation:
    gen = torch.Generator().manual_seed(seed)
    k = int(torch.randint(4, 7, (1,), generator=gen))  # 4..6 clients
    d = int(torch.randint(5, 9, (1,), generator=gen))  # dim 5..8
    a, c, m = [], [], []
    for _ in range(k):
        q, _ = torch.linalg.qr(torch.randn(d, d, generator=gen, dtype=DT))
        eig = 0.5 + 2.5 * torch.rand(d, generator=gen, dtype=DT)  # spectrum in [0.5, 3]
        a.append(q @ torch.diag(eig) @ q.T)
        c.append(2.0 * torch.randn(d, generator=gen, dtype=DT))
        m.append(float(torch.randint(10, 500, (1,), generator=gen)))
    assert len(set(m)) > 1
    return Federation(a, c, m, lam)


def big_f(fed: Federation, theta: Tensor) -> Tensor:
    """F(theta) = sum_i w_i min_t [L_i(theta + t) + lam/2 ||t||^2], differentiable in theta.
    The inner minimum solves its own stationarity condition A (theta + t - c) + lam t = 0
    here, independently of aggregation.objective."""
    eye = torch.eye(theta.shape[0], dtype=DT)
    out = torch.zeros((), dtype=DT)
    for a, c, w in zip(fed.a, fed.c, fed.w, strict=True):
        t = torch.linalg.solve(a + fed.lam * eye, a @ (c - theta))
        r = theta + t - c
        out = out + w * (0.5 * r @ a @ r + 0.5 * fed.lam * t @ t)
    return out


def coordinator_gradient(fed: Federation, theta: Params, combiner: WeightedMean) -> Params:
    """One round: every client solves its inner problem exactly at the current theta and
    sends its offset with its example count; the coordinator combines and differentiates."""
    updates = [
        ClientUpdate(
            offset={"x": quadratic_inner_optimum(a, c, theta["x"], fed.lam)},
            weight=m,
            client_id=f"c{i}",
        )
        for i, (a, c, m) in enumerate(zip(fed.a, fed.c, fed.m, strict=True))
    ]
    mean = combiner.combine(updates, theta)
    assert mean.num_clients == len(fed.a)
    return objective_gradient(mean.offset, scale=fed.lam)


def run(fed: Federation, opt: ServerOptimizer, rounds: int) -> list[Tensor]:
    theta = {"x": torch.zeros_like(fed.c[0])}
    state = opt.init(theta)
    combiner = WeightedMean()
    path = [theta["x"].clone()]
    for r in range(rounds):
        state = opt.step(theta, coordinator_gradient(fed, theta, combiner), state)
        assert state.step == r + 1
        assert theta["x"].dtype == DT
        path.append(theta["x"].clone())
    return path


def rel_err(x: Tensor, star: Tensor) -> float:
    return float((x - star).norm() / star.norm())


@pytest.mark.parametrize("lam", LAMS)
@pytest.mark.parametrize("seed", SEEDS)
def test_envelope_gradient_matches_autograd_and_finite_differences(seed: int, lam: float) -> None:
    fed = federation(seed, lam)
    gen = torch.Generator().manual_seed(1000 + seed)
    combiner = WeightedMean()
    for _ in range(3):
        x = 2.0 * torch.randn(fed.c[0].shape, generator=gen, dtype=DT)
        g = coordinator_gradient(fed, {"x": x.clone()}, combiner)["x"]  # -lam sum w theta_i*
        xr = x.clone().requires_grad_(True)
        (g_auto,) = torch.autograd.grad(big_f(fed, xr), xr)  # total derivative, through t*
        torch.testing.assert_close(g, g_auto, rtol=1e-10, atol=1e-10)
        h = 1e-5
        eye = torch.eye(x.shape[0], dtype=DT)
        g_fd = torch.stack([(big_f(fed, x + h * e) - big_f(fed, x - h * e)) / (2 * h) for e in eye])
        torch.testing.assert_close(g, g_fd, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("lam", LAMS)
@pytest.mark.parametrize("seed", SEEDS)
def test_sgd_converges_to_the_closed_form_optimum(seed: int, lam: float) -> None:
    fed = federation(seed, lam)
    star = quadratic_global_optimum(fed.a, fed.c, fed.m, lam)
    mean_c = sum(w * c for w, c in zip(fed.w, fed.c, strict=True))
    assert rel_err(mean_c, star) > 1e-2  # the target is not the trivial weighted mean of c_i

    # F is quadratic with Hessian H = sum_i w_i M_i, M_i = lam A_i (A_i + lam I)^-1, whose
    # eigenvalues lam a / (a + lam) (a an eigenvalue of A_i > 0) lie in (0, lam); so do
    # H's (a convex combination of such matrices). With lr = 1/lam the error map
    # e <- (I - H/lam) e has eigenvalues in (0, 1): a contraction, monotone, no overshoot,
    # by the factor rho = 1 - mu_min(H)/lam per round. (It is also "FedAvg of the
    # personal models": theta <- theta + sum_i w_i theta_i*.) H is computed here by
    # autograd, not from the formula.
    hess = torch.autograd.functional.hessian(lambda x: big_f(fed, x), torch.zeros_like(star))
    eig = torch.linalg.eigvalsh(hess)
    assert eig.min() > 0 and eig.max() < lam
    rho = 1.0 - float(eig.min()) / lam

    path = run(fed, sgd(lr=1.0 / lam), rounds=120)
    errs = [float((x - star).norm()) for x in path]
    for before, after in zip(errs, errs[1:], strict=False):
        assert after <= rho * before + 1e-12
    values = [float(big_f(fed, x)) for x in path]
    for before, after in zip(values, values[1:], strict=False):
        assert after <= before + 1e-12
    assert rel_err(path[-1], star) < 1e-4


@pytest.mark.parametrize("lam", LAMS)
@pytest.mark.parametrize("seed", SEEDS)
def test_adam_converges_to_the_closed_form_optimum(seed: int, lam: float) -> None:
    fed = federation(seed, lam)
    star = quadratic_global_optimum(fed.a, fed.c, fed.m, lam)
    path = run(fed, adam(lr=0.05), rounds=400)  # default betas, tau, bias correction
    assert rel_err(path[-1], star) < 1e-3
    assert max(rel_err(x, star) for x in path[-20:]) < 1e-3  # settled, not passing through


@pytest.mark.parametrize(
    "make",
    [
        lambda lam: yogi(lr=0.05),
        lambda lam: adagrad(lr=0.2),
        lambda lam: momentum(lr=0.5 / lam, beta=0.5),
        lambda lam: momentum(lr=0.5 / lam, beta=0.5, nesterov=True),
    ],
    ids=["yogi", "adagrad", "momentum", "nesterov"],
)
@pytest.mark.parametrize("lam", LAMS)
def test_other_optimizers_converge(make, lam: float) -> None:
    fed = federation(11, lam)
    star = quadratic_global_optimum(fed.a, fed.c, fed.m, lam)
    path = run(fed, make(lam), rounds=400)
    assert rel_err(path[-1], star) < 1e-3
