"""Attacks on the merge: a testing and benchmark aid, not part of fedmerge.

Hostile nodes run the real ClientApp train function on their own partition, then:

- client-side attacks change their own reply: ``sign-flip`` (the offset x -10),
  ``gaussian`` (N(0, s^2) noise of 10x the offset's norm instead of it), ``nan-inf``
  (NaN entries, or +Inf for every second attacker), ``label-flip`` (they train on
  labels 9 - y: the round config they get names ``LabelFlippedDigits`` as their task);
- omniscient, colluding attacks (Baruch et al. 2019, Xie et al. 2020, Shejwalkar and
  Houmansadr 2021) replace the hostile replies once every honest reply of the round is
  in: they see the honest offsets, as a coordinator-side wrapper does. ``little`` ("a
  little is enough": the honest mean - 1.5 std, coordinate-wise), ``ipm`` (inner-product
  manipulation: -0.5 x the honest mean), ``min-max`` (the honest mean moved against the
  std direction as far as keeps it within the honest offsets' largest pairwise distance
  of every honest offset).

Every attacker of an omniscient attack sends the same offset (they collude).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from flwr.app import Message

from client.data import ClientData
from client.tasks.api import PartitionRequest
from client.tasks.digits import DigitsTask
from coordinator.payloads import packed_record, record_tensors

OFFSET_KEY = "arrays"
LIE_Z = 1.5
IPM_EPSILON = 0.5
SCALE = 10.0
LABEL_FLIP_TASK = "bench.attacks:LabelFlippedDigits"


class LabelFlippedDigits(DigitsTask):
    """Digits whose nodes train on flipped labels (9 - y): a hostile node's data."""

    def partition(self, request: PartitionRequest) -> ClientData:
        d = super().partition(request)
        return ClientData(d.x_train, 9 - d.y_train, d.x_val, d.y_val)


Flat = torch.Tensor  # (P,) float64: an offset's tensors concatenated in template order


def _sign_flip(flat: Flat, k: int, gen: torch.Generator) -> Flat:
    return -SCALE * flat


def _gaussian(flat: Flat, k: int, gen: torch.Generator) -> Flat:
    std = SCALE * float(flat.norm()) / max(flat.numel(), 1) ** 0.5
    return torch.randn(flat.shape, generator=gen, dtype=flat.dtype) * std


def _nan_inf(flat: Flat, k: int, gen: torch.Generator) -> Flat:
    out = flat.clone()
    out[::2] = float("nan") if k % 2 == 0 else float("inf")
    return out


def _little(honest: torch.Tensor) -> Flat:
    return honest.mean(0) - LIE_Z * honest.std(0)


def _ipm(honest: torch.Tensor) -> Flat:
    return -IPM_EPSILON * honest.mean(0)


def _min_max(honest: torch.Tensor) -> Flat:
    """max_i ||m - x_i|| <= max_{i,j} ||x_i - x_j||, m = mean - gamma std_unit, gamma as
    large as that allows (bisection)."""
    mean, direction = honest.mean(0), honest.std(0)
    direction = direction / direction.norm().clamp_min(1e-12)
    bound = torch.cdist(honest, honest).max()
    lo, hi = 0.0, 1.0
    while float(torch.cdist((mean - hi * direction)[None], honest).max()) <= bound and hi < 1e6:
        lo, hi = hi, hi * 2
    for _ in range(40):
        mid = (lo + hi) / 2
        if float(torch.cdist((mean - mid * direction)[None], honest).max()) <= bound:
            lo = mid
        else:
            hi = mid
    return mean - lo * direction


OWN: dict[str, Callable[[Flat, int, torch.Generator], Flat]] = {
    "sign-flip": _sign_flip, "gaussian": _gaussian, "nan-inf": _nan_inf,
}
OMNISCIENT: dict[str, Callable[[torch.Tensor], Flat]] = {
    "little": _little, "ipm": _ipm, "min-max": _min_max,
}
ATTACKS = ("sign-flip", "gaussian", "little", "ipm", "nan-inf", "label-flip", "min-max")


@dataclass(frozen=True)
class Adversary:
    """Which partitions are hostile and what they do (one of ``ATTACKS``)."""

    attack: str
    hostile: frozenset[int]
    seed: int = 0

    def __post_init__(self) -> None:
        if self.attack not in ATTACKS:
            raise ValueError(f"unknown attack {self.attack!r}; known: {ATTACKS}")

    def task_for(self, partition: int) -> str | None:
        """The task a hostile partition trains instead of the run's (label flipping)."""
        return LABEL_FLIP_TASK if self.attack == "label-flip" and partition in self.hostile \
            else None

    def rewrite(self, replies: Mapping[int, Message], round_number: int) -> None:
        """Replace the hostile partitions' offsets in ``replies`` (partition -> the train
        reply of the real ClientApp), in place, once the round's replies are all in."""
        hostile = sorted(p for p in replies if p in self.hostile)
        if not hostile or self.attack == "label-flip":
            return
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + round_number)
        if self.attack in OWN:
            for k, p in enumerate(hostile):
                flat, layout = _flatten(replies[p])
                _replace(replies[p], OWN[self.attack](flat, k, gen), layout)
            return
        honest = [p for p in replies if p not in self.hostile]
        flats = [_flatten(replies[p]) for p in honest]
        crafted = OMNISCIENT[self.attack](torch.stack([f for f, _ in flats]))
        for p in hostile:
            _replace(replies[p], crafted, flats[0][1])


Layout = Sequence[tuple[str, tuple[int, ...], np.dtype]]


def _flatten(reply: Message) -> tuple[Flat, Layout]:
    parts, layout = [], []
    for name, t in record_tensors(reply.content[OFFSET_KEY]).items():  # packed or not
        a = t.numpy()
        parts.append(torch.from_numpy(np.asarray(a, np.float64).reshape(-1)))
        layout.append((name, a.shape, a.dtype))
    return torch.cat(parts), layout


def _replace(reply: Message, flat: Flat, layout: Layout) -> None:
    out, at = {}, 0
    for name, shape, dtype in layout:
        n = int(np.prod(shape))
        out[name] = torch.from_numpy(flat[at : at + n].numpy().astype(dtype).reshape(shape))
        at += n
    reply.content[OFFSET_KEY] = packed_record(out)
