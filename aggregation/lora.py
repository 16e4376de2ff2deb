"""Merging LoRA factors: exactly, and the way FedAvg over adapter tensors does.

Client i's low-rank offset of one targeted weight W (d_out x d_in) is s B_i A_i, with
A_i (r x d_in), B_i (d_out x r) and s = alpha / r. The objective's gradient needs

    exact:  sum_i w_i s B_i A_i

(rank at most K r). Averaging the factors separately, as FedAvg over the adapter
tensors does, gives

    naive:  s (sum_i w_i B_i) (sum_i w_i A_i)

whose cross terms w_i w_j B_i A_j (i != j) are error. ``exact_offset`` computes the exact
sum from stacked factors in one matmul, ``accumulate`` adds one client's product into a
dense buffer (so a stream of replies needs one dense tensor, never K of them), and
``naive_error`` measures how far the naive merge is from the exact one. Pure torch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor


class LoraShapeError(ValueError):
    """Factors whose shapes do not make a product, or differ between clients."""


@dataclass(frozen=True)
class Factors:
    """One client's LoRA factors of one targeted weight: the offset is scale * B @ A
    (transposed when the layer stores its weight as (d_in, d_out), GPT-2's Conv1D)."""

    a: Tensor  # (r, d_in)
    b: Tensor  # (d_out, r)
    scale: float
    transposed: bool = False

    def __post_init__(self) -> None:
        if self.a.ndim != 2 or self.b.ndim != 2 or self.b.shape[1] != self.a.shape[0]:
            raise LoraShapeError(f"LoRA factors B {tuple(self.b.shape)} and A "
                                 f"{tuple(self.a.shape)} do not make a product B @ A")

    @property
    def rank(self) -> int:
        return int(self.a.shape[0])

    @property
    def weight_shape(self) -> tuple[int, int]:
        rows, cols = int(self.b.shape[0]), int(self.a.shape[1])
        return (cols, rows) if self.transposed else (rows, cols)


def dense_offset(f: Factors) -> Tensor:
    """scale * B @ A in the weight's own layout (one dense tensor)."""
    product = torch.mm(f.b, f.a).mul_(f.scale)
    return product.t().contiguous() if f.transposed else product


def accumulate(out: Tensor, f: Factors, weight: float) -> Tensor:
    """out += weight * scale * B @ A, in place (no dense temporary beyond ``out``)."""
    if tuple(out.shape) != f.weight_shape:
        raise LoraShapeError(f"buffer {tuple(out.shape)} != the factors' weight "
                             f"{f.weight_shape}")
    alpha = weight * f.scale
    if f.transposed:  # out^T += alpha B A, through a transposed view of out
        out.t().addmm_(f.b, f.a, alpha=alpha)
    else:
        out.addmm_(f.b, f.a, alpha=alpha)
    return out


def exact_offset(clients: Sequence[Factors], weights: Sequence[float]) -> Tensor:
    """sum_i weights[i] s_i B_i A_i, from stacked factors: [B_1 .. B_K] (d_out x sum r)
    times diag(w_i s_i) times [A_1; ..; A_K] (sum r x d_in): one dense result, ranks may
    differ between clients."""
    _same_weight(clients, weights)
    b = torch.cat([f.b for f in clients], dim=1)
    a = torch.cat([f.a for f in clients], dim=0)
    diag = torch.cat([torch.full((f.rank,), float(w) * f.scale, dtype=a.dtype, device=a.device)
                      for f, w in zip(clients, weights, strict=True)])
    product = torch.mm(b * diag, a)
    return product.t().contiguous() if clients[0].transposed else product


def naive_offset(clients: Sequence[Factors], weights: Sequence[float]) -> Tensor:
    """What averaging the factors separately gives: s (sum w_i B_i) (sum w_i A_i), with
    the weights normalised to sum to 1 (FedAvg's mean of each adapter tensor)."""
    _same_weight(clients, weights)
    ranks = {f.rank for f in clients}
    if len(ranks) != 1:
        raise LoraShapeError(f"the naive merge averages factors of one rank, got ranks "
                             f"{sorted(ranks)}")
    total = float(sum(weights))
    mean_b = sum((w / total) * f.b for f, w in zip(clients, weights, strict=True))
    mean_a = sum((w / total) * f.a for f, w in zip(clients, weights, strict=True))
    merged = Factors(mean_a, mean_b, clients[0].scale, clients[0].transposed)
    return dense_offset(merged)


@dataclass(frozen=True)
class NaiveError:
    """How far the naive merge's offset is from the exact one, over all targeted weights."""

    absolute: float  # ||naive - exact||_F
    relative: float  # ... / ||exact||_F
    per_layer: dict[str, float]  # relative error of each targeted weight


def naive_error(
    layers: Mapping[str, Sequence[Factors]], weights: Sequence[float]
) -> NaiveError:
    """The naive merge's error against the exact weighted mean (weights normalised to
    sum to 1 on both sides), per targeted weight and overall (Frobenius norms)."""
    total = float(sum(weights))
    w = [x / total for x in weights]
    err_sq = ref_sq = 0.0
    per_layer = {}
    for name, clients in layers.items():
        exact = exact_offset(clients, w)
        diff = naive_offset(clients, w).sub_(exact)
        e, r = float(diff.norm()) ** 2, float(exact.norm()) ** 2
        per_layer[name] = (e / r) ** 0.5 if r > 0 else float(e > 0)
        err_sq, ref_sq = err_sq + e, ref_sq + r
    relative = (err_sq / ref_sq) ** 0.5 if ref_sq > 0 else float(err_sq > 0)
    return NaiveError(err_sq**0.5, relative, per_layer)


def _same_weight(clients: Sequence[Factors], weights: Sequence[float]) -> None:
    if not clients or len(clients) != len(weights):
        raise LoraShapeError(f"{len(clients)} clients' factors but {len(weights)} weights")
    shapes = {(f.weight_shape, f.transposed) for f in clients}
    if len(shapes) != 1:
        raise LoraShapeError(f"the clients' factors target different weights: {sorted(shapes)}")
