"""Offset combiners: how K client offsets become one offset before the optimizer step.

``WeightedMean`` and ``FisherWeightedMean`` stream: they fold each update into buffers of
the model's size as it arrives, so memory is O(P) whatever K. The robust combiners
(coordinate median, trimmed mean, (multi-)Krum) need every offset at once and so hold
O(K x P); ``streaming`` tells the caller which is which.

Partial sub-models: a client may send only some tensors. Per tensor, weights are
renormalised over the clients that sent it, and a tensor nobody sent is left out of
the result (so the optimizer does not move it).
"""

from __future__ import annotations

import math
import statistics
from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from aggregation.types import ClientUpdate, Params


class CombinerError(ValueError):
    """The updates cannot be combined as asked (e.g. too few for Krum)."""


@dataclass(frozen=True)
class CombineResult:
    """The combined offset sum_i w_i theta_i (weights normalised per tensor), holding only
    tensors at least one client sent. Its tensors may be the combiner's reused buffers:
    valid until the next ``combine`` call. ``dropped``: the clients ``combine`` was given
    but left out of the result (e.g. not selected by Krum), client id -> why."""

    offset: Params
    num_clients: int  # clients combined (those dropped included); 0: nothing merged
    diagnostics: dict[str, float | list[str]] = field(default_factory=dict)
    dropped: dict[str, str] = field(default_factory=dict)


DOT_MIN_ELEMENTS = 1 << 16
"""Tensors this big square-sum by a dot product with themselves; smaller ones go through
one ``_foreach_norm`` call, where a call per tensor would cost more than the arithmetic."""


def update_norm(offset: Params) -> float:
    """The L2 norm of an offset over all its tensors; NaN or Inf if any value is.

    A big float32/float64 tensor square-sums as a dot product with itself (BLAS on the
    CPU): at 10M elements half the time of torch's norm, and closer to the float64 value
    (4.6e-5 against 3.6e-4 relative). Half-precision tensors square-sum in float32, where
    their squares cannot overflow; the total is float64."""
    squares, small = [], []
    for t in offset.values():
        if t.numel() >= DOT_MIN_ELEMENTS and t.dtype in (torch.float32, torch.float64):
            flat = t.reshape(-1)
            squares.append(torch.dot(flat, flat).double())
        elif t.dtype in (torch.float32, torch.float64):
            small.append(t)
        else:
            squares.append(torch.linalg.vector_norm(t, dtype=torch.float32).double() ** 2)
    if small:
        squares.append(torch.stack(torch._foreach_norm(small)).double().square().sum())
    return math.sqrt(float(torch.stack(squares).sum())) if squares else 0.0


def clip_factor(offset: Params, clip_norm: float, *, norm: float | None = None) -> float:
    """The factor that scales ``offset`` to norm at most ``clip_norm`` (0 = no clipping).
    Pass ``norm`` when it is known, to spare a read of the offset."""
    if clip_norm <= 0:
        return 1.0
    norm = update_norm(offset) if norm is None else norm
    return 1.0 if norm <= clip_norm else clip_norm / norm


def reference_norm(norms: list[float], byzantine: int = 0) -> float:
    """A round's reference norm (``max-norm-ratio``'s, FLTrust's median scale): the median
    for ``byzantine`` f = 0; else the k-th smallest of the n norms,
    k = min(n, ceil((n + f + 1) / 2)).

    Whatever f of the n norms are (tiny or huge), the k-th smallest lies between the
    honest norms' median and their largest when n >= 3f + 1: at least k - f honest norms
    are at or below it, k - f >= (n - f + 1) / 2, and it is at most the k-th smallest
    honest norm, k <= n - f. The plain median can be pulled down to the
    (n/2 - f)-th smallest honest norm by f hostile clients sending small offsets, until
    honest offsets of ordinary size exceed the ratio and are rejected."""
    if byzantine <= 0:
        return statistics.median(norms)
    n = len(norms)
    k = min(n, math.ceil((n + byzantine + 1) / 2))
    return sorted(norms)[k - 1]


def _clip_factor(u: ClientUpdate, clip_norm: float) -> float:
    return clip_factor(u.offset, clip_norm, norm=u.norm)


class OffsetCombiner(ABC):
    """Turns the round's client updates into one offset."""

    streaming: bool = False
    full_updates_only: bool = False  # True: a partial update (some tensors) can't be combined

    def __init__(self, *, clip_norm: float = 0.0) -> None:
        self.clip_norm = clip_norm

    @abstractmethod
    def combine(
        self, updates: Iterable[ClientUpdate], template: Params, *, rejected: int = 0
    ) -> CombineResult:
        """Combine ``updates``, which the caller has validated (finite, within bounds);
        ``template`` gives the model's tensor names, shapes and dtypes (its values are
        not read, except by rules that say so). ``rejected``: how many of the round's
        replies validation refused. A rule that tolerates f hostile clients counts them
        among its f (a refused reply is a hostile client already out), so f' =
        max(0, f - rejected) of ``updates`` may still be hostile. Only rules that hold
        the round (``streaming`` False) are given it; the others ignore it."""


class WeightedMean(OffsetCombiner):
    """The examples-weighted mean, streamed: O(P) memory whatever K, buffers reused across
    rounds.

    Per client one ``_foreach_`` in-place axpy over its tensors; clipping reuses the norm
    the validator measured (``ClientUpdate.norm``), so an offset is read twice in all:
    once for its norm, once here. (Folding chunk by chunk into a scratch buffer, to read
    each offset once, measured slower on the CPU: the scratch writes cost what the second
    read saved, plus a call per chunk.)
    """

    streaming = True

    def __init__(self, *, clip_norm: float = 0.0) -> None:
        super().__init__(clip_norm=clip_norm)
        self._sum: Params = {}

    def _buffers(self, template: Params) -> Params:
        if not _same_layout(self._sum, template):
            self._sum = {k: torch.zeros_like(t) for k, t in template.items()}
        else:
            torch._foreach_zero_(list(self._sum.values()))
        return self._sum

    @torch.no_grad()
    def combine(
        self, updates: Iterable[ClientUpdate], template: Params, *, rejected: int = 0
    ) -> CombineResult:
        acc = self._buffers(template)
        weight_sum = dict.fromkeys(acc, 0.0)
        merged = 0
        device = next(iter(acc.values())).device
        for u in updates:
            xs = [x.to(device, non_blocking=True) for x in u.offset.values()]
            scale = _clip_factor(u, self.clip_norm)
            if xs:
                torch._foreach_add_([acc[k] for k in u.offset], xs, alpha=u.weight * scale)
            for k in u.offset:
                weight_sum[k] += u.weight
            merged += 1
        mean = _normalise(acc, weight_sum)
        return CombineResult(mean, merged)


class FisherWeightedMean(OffsetCombiner):
    """Curvature-weighted merge (Matena and Raffel 2022): per coordinate,
    sum_i w_i F_i theta_i / sum_i w_i F_i. With equal Fishers it is ``WeightedMean``.
    A client without a Fisher counts with F = 1."""

    streaming = True

    def __init__(self, *, clip_norm: float = 0.0, eps: float = 1e-8) -> None:
        super().__init__(clip_norm=clip_norm)
        self.eps = eps

    @torch.no_grad()
    def combine(
        self, updates: Iterable[ClientUpdate], template: Params, *, rejected: int = 0
    ) -> CombineResult:
        num = {k: torch.zeros_like(t) for k, t in template.items()}
        den = {k: torch.zeros_like(t) for k, t in template.items()}
        sent: set[str] = set()
        n = 0
        for u in updates:
            scale = _clip_factor(u, self.clip_norm)
            for k, t in u.offset.items():
                fisher = u.fisher.get(k) if u.fisher else None
                if fisher is None:
                    num[k].add_(t, alpha=u.weight * scale)
                    den[k].add_(u.weight)
                else:
                    num[k].addcmul_(fisher, t, value=u.weight * scale)
                    den[k].add_(fisher, alpha=u.weight)
                sent.add(k)
            n += 1
        # eps must survive the buffer's dtype: 1e-8 is 0 in float16, and 0/0 is NaN.
        floor = {k: max(self.eps, torch.finfo(t.dtype).tiny) for k, t in den.items()}
        out = {k: num[k].div_(den[k].clamp_min_(floor[k])) for k in template if k in sent}
        return CombineResult(out, n)


class _StackingCombiner(OffsetCombiner):
    """Base of the robust combiners: per tensor, stack the offsets of the clients that
    sent it, shape (K_k, *shape), and reduce over dim 0."""

    @torch.no_grad()
    def combine(
        self, updates: Iterable[ClientUpdate], template: Params, *, rejected: int = 0
    ) -> CombineResult:
        ups = list(updates)  # O(K x P): these combiners need every offset at once
        scales = [_clip_factor(u, self.clip_norm) for u in ups]
        out: Params = {}
        for k in template:
            rows = [(u, s) for u, s in zip(ups, scales, strict=True) if k in u.offset]
            if rows:
                stacked = torch.stack([u.offset[k] for u, _ in rows])  # (K_k, *shape)
                if self.clip_norm > 0:
                    stacked.mul_(_column([s for _, s in rows], stacked))
                out[k] = self.reduce(stacked, [u.weight for u, _ in rows], rejected=rejected)
        return CombineResult(out, len(ups))

    @abstractmethod
    def reduce(self, stacked: Tensor, weights: list[float], *, rejected: int = 0) -> Tensor:
        """Reduce (K, *shape) to (*shape); ``rejected`` as in ``combine``."""


class CoordinateMedian(_StackingCombiner):
    """Coordinate-wise median (Yin et al. 2018); the mean of the two middle values for
    an even count. Unweighted: one client, one vote."""

    def reduce(self, stacked: Tensor, weights: list[float], *, rejected: int = 0) -> Tensor:
        return median_rows(stacked)


def median_rows(stacked: Tensor) -> Tensor:
    """The coordinate-wise median of (K, *shape) over dim 0; the mean of the two middle
    values for an even K."""
    k = stacked.shape[0]
    s = stacked.sort(dim=0).values
    if k % 2:
            return s[k // 2]
    return (s[k // 2 - 1] + s[k // 2]) / 2


class TrimmedMean(_StackingCombiner):
    """Coordinate-wise trimmed mean: drop the f largest and smallest values per coordinate,
    average the rest (Yin et al. 2018). f = floor(beta n) of the round's n = K + rejected
    replies, less those validation already refused: f' = max(0, f - rejected) of the K
    valid ones are cut at each end."""

    def __init__(self, *, beta: float = 0.1, clip_norm: float = 0.0) -> None:
        super().__init__(clip_norm=clip_norm)
        if not 0.0 <= beta < 0.5:
            raise CombinerError(f"trim-beta must be in [0, 0.5), got {beta}")
        self.beta = beta

    def reduce(self, stacked: Tensor, weights: list[float], *, rejected: int = 0) -> Tensor:
        k = stacked.shape[0]
        return trimmed_rows(stacked, self.cut(k, rejected))

    def cut(self, valid: int, rejected: int = 0) -> int:
        """Values cut at each end out of ``valid``, when ``rejected`` replies are out."""
        return max(0, math.floor(self.beta * (valid + rejected)) - rejected)


def trimmed_rows(stacked: Tensor, cut: int) -> Tensor:
    """The mean over dim 0 of (K, *shape) without the ``cut`` largest and smallest values
    of each coordinate."""
    k = stacked.shape[0]
    s = stacked.sort(dim=0).values
    return s[cut : k - cut].mean(dim=0)


class Krum(OffsetCombiner):
    """Krum and multi-Krum (Blanchard et al. 2017): score each client by the summed
    squared distances to its K - f - 2 nearest others, keep the ``num_selected`` best
    scored and average them by examples. ``num_selected`` = 1 is Krum; None is multi-Krum
    with m = K - f. Every client must send every tensor (distances are over the model).
    Replies validation refused count among the f hostile clients: with ``rejected`` of
    them, f' = max(0, f - rejected) and K >= 2f' + 3 valid updates suffice."""

    full_updates_only = True

    def __init__(
        self, *, byzantine: int = 1, num_selected: int | None = 1, clip_norm: float = 0.0
    ) -> None:
        super().__init__(clip_norm=clip_norm)
        self.byzantine = byzantine
        self.num_selected = num_selected
        self._mean = WeightedMean(clip_norm=clip_norm)

    @torch.no_grad()
    def combine(
        self, updates: Iterable[ClientUpdate], template: Params, *, rejected: int = 0
    ) -> CombineResult:
        ups = list(updates)
        k = len(ups)
        f = max(0, self.byzantine - rejected)
        if k < 2 * f + 3:
            raise CombinerError(
                f"krum with f={self.byzantine} ({rejected} already rejected: f'={f}) needs "
                f"at least {2 * f + 3} valid clients, got {k}"
            )
        if any(set(u.offset) != set(template) for u in ups):
            raise CombinerError("krum needs every client to send every tensor")
        scales = [_clip_factor(u, self.clip_norm) for u in ups]
        dist = torch.zeros(k, k, dtype=torch.float64)
        for name in template:
            x = torch.stack([u.offset[name].reshape(-1) for u in ups]).double()  # (K, numel)
            if self.clip_norm > 0:
                x.mul_(_column(scales, x))
            dist += torch.cdist(x, x).square()  # (K, K)
        nearest = k - f - 2
        # Row i's smallest value is its zero self-distance: skip it.
        scores = dist.sort(dim=1).values[:, 1 : nearest + 1].sum(dim=1)
        m = k - f if self.num_selected is None else min(self.num_selected, k)
        order = scores.argsort().tolist()
        chosen = order[:m]
        mean = self._mean.combine([ups[i] for i in chosen], template)  # clips them alike
        diag: dict[str, float | list[str]] = {"selected": [ups[i].client_id for i in chosen]}
        dropped = {
            ups[i].client_id: (f"not selected by krum: score rank {rank + 1} of {k}, "
                               f"{m} selected (f={f})")
            for rank, i in enumerate(order) if rank >= m
        }
        return CombineResult(mean.offset, k, diag, dropped)


def _column(values: list[float], like: Tensor) -> Tensor:
    """``values`` shaped (K, 1, ...) to scale the rows of a stacked (K, ...) tensor."""
    return torch.tensor(values, dtype=like.dtype, device=like.device).view(
        -1, *[1] * (like.dim() - 1))


def _same_layout(a: Params, b: Params) -> bool:
    return a.keys() == b.keys() and all(
        a[k].shape == b[k].shape and a[k].dtype == b[k].dtype and a[k].device == b[k].device
        for k in a
    )


def _normalise(acc: Params, weight_sum: dict[str, float]) -> Params:
    out = {k: t for k, t in acc.items() if weight_sum[k] > 0}
    for k, t in out.items():
        t.div_(weight_sum[k])
    return out
