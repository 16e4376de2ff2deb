"""Merging LoRA factors: exactly, and the way FedAvg over adapter tensors does.

Client i's low-rank offset of one targeted weight W (d_out x d_in) is s B_i A_i, with
A_i (r x d_in), B_i (d_out x r) and s = alpha / r. The objective's gradient needs

    exact:  sum_i w_i s B_i A_i

(rank at most K r). Averaging the factors separately, as FedAvg over the adapter
tensors does, gives

    naive:  s (sum_i w_i B_i) (sum_i w_i A_i)

whose cross terms w_i w_j B_i A_j (i != j) are error. ``exact_offset`` computes the exact
sum from stacked factors in one matmul, ``accumulate`` adds one client's product into a
dense buffer (so a stream of replies needs one dense tensor, never K of them),
``LowRankSum`` does that for a round's replies with each one's norm checked from its
factors first, and ``naive_error`` measures how far the naive merge is from the exact
one. Pure torch.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from aggregation.streaming import Checked, Judge


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


def factors_norm(f: Factors) -> float:
    """||s B A||_F from the factors alone: s sqrt(sum((B^T B) * (A A^T))), both r x r
    (float64), never the dense product; NaN or Inf in a factor makes it non-finite."""
    a, b = f.a.double(), f.b.double()
    square = float((b.t() @ b).mul_(a @ a.t()).sum()) * f.scale**2
    return math.sqrt(max(square, 0.0)) if math.isfinite(square) else math.nan


class LowRankSum:
    """sum_i c_i w_i s B_i A_i over the accepted clients, into one dense buffer per
    targeted weight, one client at a time: a client's norm comes from its factors
    (``factors_norm``) and is judged before anything is added, so a refused client
    leaves the sum untouched, and a clipped one (c_i = clip_norm / norm) is added once,
    scaled. Memory: one buffer of theta's targeted weights plus the client's factors
    (never a dense offset per client, never a second buffer). Reused across rounds."""

    def __init__(self, *, clip_norm: float = 0.0) -> None:
        self.clip_norm = clip_norm
        self._sum: dict[str, Tensor] = {}
        self.weight_sum: dict[str, float] = {}
        self.added = 0

    def reset(self, template: Mapping[str, Tensor]) -> None:
        same = self._sum.keys() == template.keys() and all(
            self._sum[k].shape == t.shape and self._sum[k].dtype == t.dtype
            for k, t in template.items())
        if same:
            torch._foreach_zero_(list(self._sum.values()))
        else:
            self._sum = {k: torch.zeros_like(t) for k, t in template.items()}
        self.weight_sum = dict.fromkeys(template, 0.0)
        self.added = 0

    @torch.no_grad()
    def add(self, client_id: str, factors: Mapping[str, Factors], weight: float,
            judge: Judge) -> Checked:
        """Judge one client's offset by its norm and, if it passes, add it (clipped)."""
        unknown = sorted(set(factors) - set(self._sum))
        if unknown:
            raise LoraShapeError(f"factors of {unknown}: not a targeted weight")
        norm = math.sqrt(sum(factors_norm(f) ** 2 for f in factors.values()))
        problem = judge(norm)
        scale = 1.0
        if problem is None and self.clip_norm > 0 and norm > self.clip_norm:
            scale = self.clip_norm / norm
        if problem is None:
            for name, f in factors.items():
                accumulate(self._sum[name], f, weight * scale)
                self.weight_sum[name] += weight
            self.added += 1
        return Checked(client_id, norm, problem, scale)

    def mean(self, scale: float = 1.0) -> dict[str, Tensor]:
        """Per weight, ``scale`` x the sum over the weights of the clients that sent it,
        in place (this object's buffers: valid until the next ``reset``)."""
        out = {k: t for k, t in self._sum.items() if self.weight_sum[k] > 0}
        for k, t in out.items():
            t.div_(self.weight_sum[k] / scale)
        return out
