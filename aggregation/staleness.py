"""Staleness weights for asynchronous merges: s(tau), the factor on an offset computed
from a theta that is ``tau`` merge steps old (tau = current version - its base version).

- constant:   s(tau) = 1
- polynomial: s(tau) = (1 + tau)^-a  (FedBuff's default, a = 0.5)
- hinge:      s(tau) = 1 for tau <= b, else 1 / (a (tau - b) + 1)

Each is 1 at tau = 0 and never increases with tau, so a fresh offset counts in full.
Pure python: no flwr, no torch needed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

StalenessKind = Literal["constant", "polynomial", "hinge"]
STALENESS_KINDS: tuple[StalenessKind, ...] = ("constant", "polynomial", "hinge")


class StalenessError(ValueError):
    """A staleness weight asked for with an unknown kind, a bad parameter or tau < 0."""


@dataclass(frozen=True)
class StalenessWeight:
    """s(tau) of one kind; ``exponent`` is a (polynomial's power, hinge's slope),
    ``hinge`` is b (the staleness the hinge tolerates in full)."""

    kind: StalenessKind = "polynomial"
    exponent: float = 0.5
    hinge: int = 4

    def __post_init__(self) -> None:
        if self.kind not in STALENESS_KINDS:
            raise StalenessError(f"staleness {self.kind!r} is not one of {STALENESS_KINDS}")
        if not self.exponent >= 0:  # also refuses NaN
            raise StalenessError(f"staleness exponent must be >= 0, got {self.exponent}")
        if self.hinge < 0:
            raise StalenessError(f"staleness hinge must be >= 0, got {self.hinge}")

    def __call__(self, tau: int) -> float:
        if tau < 0:
            raise StalenessError(f"staleness tau must be >= 0, got {tau}")
        if self.kind == "constant":
            return 1.0
        if self.kind == "polynomial":
            return float((1.0 + tau) ** -self.exponent)
        if tau <= self.hinge:
            return 1.0
        return 1.0 / (self.exponent * (tau - self.hinge) + 1.0)
