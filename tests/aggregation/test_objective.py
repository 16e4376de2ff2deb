"""aggregation/objective.py: the quadratic clients' closed forms, checked against the
definitions of docs/design.md (inner problem, F, its minimiser), not against each other."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from aggregation.objective import quadratic_global_optimum, quadratic_inner_optimum

DT = torch.float64


def random_spd(d: int, gen: torch.Generator, lo: float = 0.3, hi: float = 4.0) -> Tensor:
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=gen, dtype=DT))
    eig = lo + (hi - lo) * torch.rand(d, generator=gen, dtype=DT)
    return q @ torch.diag(eig) @ q.T  # (d, d)


def problem(seed: int, k: int = 4, d: int = 6) -> tuple[list[Tensor], list[Tensor], list[float]]:
    gen = torch.Generator().manual_seed(seed)
    a = [random_spd(d, gen) for _ in range(k)]
    c = [3.0 * torch.randn(d, generator=gen, dtype=DT) for _ in range(k)]
    w = [float(torch.randint(5, 400, (1,), generator=gen)) for _ in range(k)]
    return a, c, w


def inner_objective(a: Tensor, c: Tensor, theta: Tensor, t: Tensor, lam: float) -> Tensor:
    """L_i(theta + theta_i) + lam/2 ||theta_i||^2, written from docs/design.md."""
    r = theta + t - c
    return 0.5 * r @ a @ r + 0.5 * lam * t @ t


def big_f(a: list[Tensor], c: list[Tensor], w: list[float], theta: Tensor, lam: float) -> Tensor:
    """F(theta) = sum_i w_i min_t [...], the inner minimum found by solving its own
    stationarity condition A (theta + t - c) + lam t = 0 (not by the code under test)."""
    total = sum(w)
    eye = torch.eye(theta.shape[0], dtype=DT)
    out = torch.zeros((), dtype=DT)
    for a_i, c_i, w_i in zip(a, c, w, strict=True):
        t = torch.linalg.solve(a_i + lam * eye, a_i @ (c_i - theta))
        out = out + (w_i / total) * inner_objective(a_i, c_i, theta, t, lam)
    return out


@pytest.mark.parametrize("lam", [0.1, 0.5, 2.0, 10.0])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_inner_optimum_minimises_the_inner_problem(seed: int, lam: float) -> None:
    a, c, _ = problem(seed)
    gen = torch.Generator().manual_seed(100 + seed)
    theta = torch.randn(a[0].shape[0], generator=gen, dtype=DT)
    for a_i, c_i in zip(a, c, strict=True):
        t = quadratic_inner_optimum(a_i, c_i, theta, lam)
        assert t.dtype == DT and t.shape == theta.shape
        # Zero gradient of the inner objective (autograd on the definition).
        tt = t.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(inner_objective(a_i, c_i, theta, tt, lam), tt)
        assert grad.abs().max() < 1e-10
        # And a minimum: every perturbation costs (the inner problem is strictly convex).
        best = inner_objective(a_i, c_i, theta, t, lam)
        for _ in range(20):
            dt = 1e-2 * torch.randn(t.shape, generator=gen, dtype=DT)
            assert inner_objective(a_i, c_i, theta, t + dt, lam) > best


@pytest.mark.parametrize("lam", [0.5, 2.0])
@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_global_optimum_is_the_minimiser_of_f(seed: int, lam: float) -> None:
    a, c, w = problem(seed)
    star = quadratic_global_optimum(a, c, w, lam)
    # F is quadratic, so one Newton step from anywhere lands on its minimiser.
    x0 = torch.zeros_like(c[0])
    hess = torch.autograd.functional.hessian(lambda x: big_f(a, c, w, x, lam), x0)
    grad0 = torch.autograd.functional.jacobian(lambda x: big_f(a, c, w, x, lam), x0)
    newton = x0 - torch.linalg.solve(hess, grad0)
    torch.testing.assert_close(star, newton, rtol=1e-9, atol=1e-9)
    assert torch.linalg.eigvalsh(hess).min() > 0  # a minimum, not a saddle
    xs = star.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(big_f(a, c, w, xs, lam), xs)
    assert g.abs().max() < 1e-10


def test_global_optimum_normalises_weights() -> None:
    a, c, w = problem(5)
    lam = 1.3
    ref = quadratic_global_optimum(a, c, w, lam)
    torch.testing.assert_close(quadratic_global_optimum(a, c, [7.0 * x for x in w], lam), ref)
    # Unequal weights matter: equal weights give another point.
    other = quadratic_global_optimum(a, c, [1.0] * len(w), lam)
    assert (other - ref).norm() > 1e-3 * ref.norm()


def test_single_client_optimum_is_its_own_centre() -> None:
    a, c, _ = problem(6, k=1)
    torch.testing.assert_close(quadratic_global_optimum(a, c, [3.0], 0.7), c[0])


def test_lam_limits() -> None:
    """lam -> infinity: one shared model, argmin sum_i w_i L_i = (sum w A)^-1 sum w A c.
    lam -> 0: every client fits itself, and F's minimiser is the weighted mean of the c_i."""
    a, c, w = problem(7)
    total = sum(w)
    shared = torch.linalg.solve(
        sum(wi / total * ai for ai, wi in zip(a, w, strict=True)),
        sum(wi / total * ai @ ci for ai, ci, wi in zip(a, c, w, strict=True)),
    )
    torch.testing.assert_close(quadratic_global_optimum(a, c, w, 1e7), shared, rtol=0, atol=1e-5)
    mean_c = sum(wi / total * ci for ci, wi in zip(c, w, strict=True))
    torch.testing.assert_close(quadratic_global_optimum(a, c, w, 1e-7), mean_c, rtol=0, atol=1e-5)
    assert (shared - mean_c).norm() > 1e-2  # the two limits are different points
