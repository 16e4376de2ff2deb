"""A weighted sum that validates each offset in the same pass that adds it.

``CheckedSum`` folds client offsets into a running sum over cache-sized blocks: while a
block of an offset is in cache, it is square-summed (its share of the offset's norm:
NaN or Inf anywhere makes the norm non-finite) and added. Offsets come in groups; the
group's blocks go outer and the group's offsets inner, so each block of the sum stays
in cache while the whole group is added to it.

Refusals are exact: a group is summed into a second buffer (``next = sum + w x ...``)
and the two buffers swap only once every offset of the group has passed its checks. An
offset found bad (non-finite, over the norm bound, or in need of clipping, which the
norm decides only at its end) makes the group be summed again from the untouched
buffer without it (or with its clip factor): the sum is then bit for bit what it would
have been had the offset never come. Memory: two buffers of the model's size, plus the
group the caller holds.

Small tensors are handled in bundles (one ``_foreach_`` call per offset per bundle),
so a model of many small tensors costs a few calls per offset, not one per tensor.

Threads: blocks are independent, so a pool of ``threads`` workers takes them one at a
time (each op single-threaded inside; torch's intra-op threads are never used here). A
worker the OS deschedules simply takes fewer blocks: no barrier waits for it, which is
what makes torch's own intra-op threads collapse on a busy machine. ``merge_threads``
chooses one worker when the machine has no idle core.

Pure torch: no flwr, no I/O.
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor

from aggregation.types import ClientUpdate, Params

BLOCK_ELEMENTS = 1 << 20
"""Elements per block: 4 MiB of float32, a block of the sum and of one offset stay in a
core's share of the last-level cache."""

PARALLEL_MIN = 4 * BLOCK_ELEMENTS
"""Models smaller than this merge on one thread (too few blocks to share)."""

DOT_DTYPES = (torch.float32, torch.float64)

Judge = Callable[[float], str | None]
"""Why an offset of this L2 norm must not be merged, or None."""


def merge_threads(setting: int, numel: int, load: float | None = None) -> int:
    """The merge's workers: ``setting`` when > 0 (the run config's merge-threads), else
    chosen per merge: one below ``PARALLEL_MIN`` elements (too few blocks to share) or
    when the machine has no idle core (``load``, by default the 1-minute load average, at
    least the usable cores), else one per usable core."""
    if setting > 0:
        return setting
    cores = _usable_cores()
    if numel < PARALLEL_MIN or cores == 1:
        return 1
    if load is None:
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    return 1 if load >= cores else cores


def _usable_cores() -> int:
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


@dataclass(frozen=True)
class Checked:
    """One offset's fate in ``CheckedSum.add``: its norm, and why it was left out (None:
    added). ``scale``: the clip factor it was added with."""

    client_id: str
    norm: float
    problem: str | None = None
    scale: float = 1.0


@dataclass(frozen=True)
class _Block:
    """Either a slice [start, stop) of one big tensor, or several small whole tensors."""

    names: tuple[str, ...]
    start: int = 0
    stop: int = 0

    @property
    def bundle(self) -> bool:
        return self.stop == 0


def plan_blocks(template: Params, block: int = BLOCK_ELEMENTS) -> list[_Block]:
    """The blocks of a model: each big tensor cut into slices of at most ``block``
    elements; consecutive small tensors bundled up to ``block`` elements."""
    out: list[_Block] = []
    bundle: list[str] = []
    size = 0
    for name, t in template.items():
        n = t.numel()
        if n >= block // 4:
            out.extend(_Block((name,), s, min(s + block, n)) for s in range(0, n, block))
            continue
        if size + n > block and bundle:
            out.append(_Block(tuple(bundle)))
            bundle, size = [], 0
        bundle.append(name)
        size += n
    if bundle:
        out.append(_Block(tuple(bundle)))
    return out


class CheckedSum:
    """sum_i s_i w_i x_i over the accepted offsets x_i (weights w_i, clip factors s_i),
    and per tensor sum_i w_i over the offsets that sent it. Reused across rounds:
    ``reset`` zeroes it for a model."""

    def __init__(self, *, clip_norm: float = 0.0, threads: int = 0,
                 block: int = BLOCK_ELEMENTS) -> None:
        if threads < 0:
            raise ValueError(f"threads must be >= 0 (0: by the model's size), got {threads}")
        self.clip_norm = clip_norm
        self.setting = threads
        self.threads = max(threads, 1)  # ``reset`` resolves 0 for the model
        self.block = block
        self._sum: Params = {}
        self._next: Params = {}
        self._blocks: list[_Block] = []
        self.weight_sum: dict[str, float] = {}
        self.added = 0
        self._pool: ThreadPoolExecutor | None = None

    def reset(self, template: Params) -> None:
        if not _same_layout(self._sum, template):
            self._sum = {k: torch.zeros_like(t) for k, t in template.items()}
            self._next = {k: torch.zeros_like(t) for k, t in template.items()}
            self._blocks = plan_blocks(template, self.block)
        else:
            torch._foreach_zero_(list(self._sum.values()))
        threads = merge_threads(self.setting, sum(t.numel() for t in template.values()))
        if threads != self.threads and self._pool is not None:
            self._pool.shutdown()
            self._pool = None
        self.threads = threads
        self.weight_sum = dict.fromkeys(template, 0.0)
        self.added = 0

    @torch.no_grad()
    def add(self, group: Sequence[ClientUpdate], judge: Judge) -> list[Checked]:
        """Check and add a group of offsets (each naming some of the model's tensors,
        with the model's shapes and dtypes); the offsets found bad are left out exactly.
        Returns each offset's fate, in the group's order."""
        if not group:
            return []
        scales = [1.0] * len(group)
        norms = self._pass(group, scales)
        fates = [self._fate(u, norm, judge) for u, norm in zip(group, norms, strict=True)]
        if any(f.problem is not None or f.scale != 1.0 for f in fates):
            keep = [(u, f) for u, f in zip(group, fates, strict=True) if f.problem is None]
            if keep:  # summed again from the untouched buffer: exact
                self._pass([u for u, _ in keep], [f.scale for _, f in keep])
        keep_updates = [u for u, f in zip(group, fates, strict=True) if f.problem is None]
        if keep_updates:
            self._commit(keep_updates)
        return fates

    def mean(self, scale: float = 1.0) -> Params:
        """Per tensor, ``scale`` x the sum over the weights of the offsets that sent it
        (one pass); tensors nobody sent are left out. The tensors are this object's
        buffers, scaled in place: valid until the next ``reset``."""
        out = {k: t for k, t in self._sum.items() if self.weight_sum[k] > 0}
        for k, t in out.items():
            t.div_(self.weight_sum[k] / scale)  # scale -1: exactly -(sum / weights)
        return out

    def _fate(self, u: ClientUpdate, norm: float, judge: Judge) -> Checked:
        problem = judge(norm)
        scale = 1.0
        if problem is None and self.clip_norm > 0 and norm > self.clip_norm:
            scale = self.clip_norm / norm
        return Checked(u.client_id, norm, problem, scale)

    def _commit(self, group: Sequence[ClientUpdate]) -> None:
        """The group passed: its tensors' new sums become the sums."""
        touched = {k for u in group for k in u.offset}
        for k in touched:
            self._sum[k], self._next[k] = self._next[k], self._sum[k]
        for u in group:
            for k in u.offset:
                self.weight_sum[k] += u.weight
        self.added += len(group)

    def _pass(self, group: Sequence[ClientUpdate], scales: Sequence[float]) -> list[float]:
        """next = sum + sum_i s_i w_i x_i over every block; returns each offset's norm."""
        squares: list[list[Tensor]] = [[] for _ in group]
        alphas = [u.weight * s for u, s in zip(group, scales, strict=True)]
        lock = threading.Lock()

        def run(b: _Block) -> None:
            got = (self._bundle if b.bundle else self._slice)(b, group, alphas)
            with lock:
                for i, sq in got:
                    squares[i].append(sq)

        if self.threads == 1 or len(self._blocks) == 1:
            with _single_threaded_ops():  # never torch's intra-op threads: see above
                for b in self._blocks:
                    run(b)
        else:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="merge")
            with _single_threaded_ops():
                list(self._pool.map(run, self._blocks))
        return [_norm(sq) for sq in squares]

    def _slice(self, b: _Block, group: Sequence[ClientUpdate],
               alphas: Sequence[float]) -> list[tuple[int, Tensor]]:
        name = b.names[0]
        src = self._sum[name].view(-1)[b.start:b.stop]
        dst = self._next[name].view(-1)[b.start:b.stop]
        first = True
        got = []
        for i, (u, alpha) in enumerate(zip(group, alphas, strict=True)):
            x = u.offset.get(name)
            if x is None:
                continue
            xb = x.reshape(-1)[b.start:b.stop]
            got.append((i, _square_sum(xb)))
            if first:
                torch.add(src, xb, alpha=alpha, out=dst)
                first = False
            else:
                dst.add_(xb, alpha=alpha)
        return got

    def _bundle(self, b: _Block, group: Sequence[ClientUpdate],
                alphas: Sequence[float]) -> list[tuple[int, Tensor]]:
        sent = [n for n in b.names if any(n in u.offset for u in group)]
        if sent:
            torch._foreach_copy_([self._next[n] for n in sent], [self._sum[n] for n in sent])
        got = []
        for i, (u, alpha) in enumerate(zip(group, alphas, strict=True)):
            names = [n for n in b.names if n in u.offset]
            if not names:
                continue
            xs = [u.offset[n] for n in names]
            got.append((i, _bundle_square_sum(xs)))
            torch._foreach_add_([self._next[n] for n in names], xs, alpha=alpha)
        return got


def _square_sum(x: Tensor) -> Tensor:
    if x.dtype in DOT_DTYPES:
        return torch.dot(x, x)
    return torch.linalg.vector_norm(x, dtype=torch.float32).square()


def _bundle_square_sum(xs: list[Tensor]) -> Tensor:
    if all(x.dtype in DOT_DTYPES for x in xs):
        return torch.stack(torch._foreach_norm(xs)).double().square().sum()
    return torch.stack([_square_sum(x.reshape(-1)).double() for x in xs]).sum()


def _norm(squares: list[Tensor]) -> float:
    if not squares:
        return 0.0
    total = float(torch.stack([s.double() for s in squares]).sum())
    return math.sqrt(total) if total >= 0 else math.nan


@contextmanager
def _single_threaded_ops() -> Iterator[None]:
    """Each op single-threaded while the pool's workers split the blocks."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _same_layout(a: Params, b: Params) -> bool:
    return a.keys() == b.keys() and all(
        a[k].shape == b[k].shape and a[k].dtype == b[k].dtype and a[k].device == b[k].device
        for k in a
    )
