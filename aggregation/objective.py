"""The objective (docs/design.md) in closed form for quadratic clients, the check that cannot
be argued with: L_i(x) = 1/2 (x - c_i)^T A_i (x - c_i), A_i symmetric positive definite."""

from __future__ import annotations

import torch
from torch import Tensor


def quadratic_inner_optimum(a: Tensor, c: Tensor, theta: Tensor, lam: float) -> Tensor:
    """theta_i*(theta) = (A_i + lam I)^-1 A_i (c_i - theta)."""
    eye = torch.eye(a.shape[0], dtype=a.dtype)
    return torch.linalg.solve(a + lam * eye, a @ (c - theta))


def quadratic_global_optimum(
    a: list[Tensor], c: list[Tensor], weights: list[float], lam: float
) -> Tensor:
    """theta* = (sum_i w_i M_i)^-1 sum_i w_i M_i c_i with M_i = lam A_i (A_i + lam I)^-1."""
    total = sum(weights)
    eye = torch.eye(a[0].shape[0], dtype=a[0].dtype)
    lhs = torch.zeros_like(a[0])
    rhs = torch.zeros_like(c[0])
    for a_i, c_i, w in zip(a, c, weights, strict=True):
        m_i = lam * a_i @ torch.linalg.inv(a_i + lam * eye)
        lhs += (w / total) * m_i
        rhs += (w / total) * (m_i @ c_i)
    return torch.linalg.solve(lhs, rhs)
