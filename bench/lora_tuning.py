"""bench.lora's contenders, and the fair choice of the exact merge's server optimizer.

The exact merge's server step is a knob the anchor does not have (Flower's FedAvg over
the adapter tensors has no server learning rate; its only knob, the clients' learning
rate, is kept equal for every contender: same client work). The knob is set on tuning
seeds that are never reported: every setting of a small grid runs on them, the one with
the lowest mean final held-out perplexity there is chosen (per optimizer family: the SGD
family, plain or with momentum, and Adam), and only the chosen settings run on the
report seeds.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Setting:
    """A contender: its label, the task's lora-merge and its run-config overrides
    (``{"flower": True}``: Flower's own FedAvg strategy instead of ours)."""

    label: str
    merge: str
    overrides: Mapping[str, Any] = field(default_factory=dict)

    @property
    def family(self) -> str:
        return "adam" if self.overrides.get("optimizer") == "adam" else "sgd"


ANCHOR = Setting("Flower FedAvg (adapters)", "naive", {"flower": True})
NAIVE = Setting("ours naive (SGD lr 1)", "naive", {"optimizer": "sgd", "server-lr": 1.0})
EXACT_SGD = Setting("ours exact (SGD lr 1)", "exact", {"optimizer": "sgd", "server-lr": 1.0})
EXACT_ADAM = Setting("ours exact (Adam lr 1e-3)", "exact",
                     {"optimizer": "adam", "server-lr": 1e-3})
FIXED = (ANCHOR, NAIVE, EXACT_SGD)
"""Run on the report seeds whatever the tuning chose."""


def tuning_grid() -> list[Setting]:
    """The exact merge's server optimizers tried on the tuning seeds."""
    grid = [Setting(f"ours exact (SGD lr {lr:g})", "exact",
                    {"optimizer": "sgd", "server-lr": lr}) for lr in (1.0, 1.5, 2.0, 3.0)]
    grid.append(Setting("ours exact (momentum lr 1, beta 0.5)", "exact",
                        {"optimizer": "momentum", "server-lr": 1.0, "momentum": 0.5}))
    grid += [Setting(f"ours exact (Adam lr {lr:g}, beta1 {b:g})", "exact",
                     {"optimizer": "adam", "server-lr": lr, "beta1": b})
             for lr, b in ((3e-3, 0.9), (1e-2, 0.9), (3e-2, 0.9))]
    return grid


@dataclass(frozen=True)
class Tuned:
    """The tuning's outcome: each setting's final perplexity per tuning seed, and the
    setting chosen per family (best first)."""

    finals: dict[str, list[float]]  # label -> final perplexity per tuning seed
    chosen: list[Setting]

    def score(self, label: str) -> float:
        values = self.finals[label]
        return sum(values) / len(values) if values else math.inf


FinalOf = Callable[[Setting, int], float]
"""(setting, seed) -> the run's final held-out perplexity (NaN or inf if it diverged)."""


def tune(grid: Sequence[Setting], seeds: Sequence[int], final_of: FinalOf) -> Tuned:
    """Runs every setting of ``grid`` on the tuning ``seeds`` and chooses, per family, the
    one with the lowest mean final perplexity (a diverged run counts as inf)."""
    if not grid or not seeds:
        raise ValueError("tuning needs at least one setting and one seed")
    finals: dict[str, list[float]] = {}
    for setting in grid:
        values = [final_of(setting, seed) for seed in seeds]
        finals[setting.label] = [v if math.isfinite(v) else math.inf for v in values]
    best: dict[str, Setting] = {}
    for setting in grid:
        current = best.get(setting.family)
        if current is None or _mean(finals[setting.label]) < _mean(finals[current.label]):
            best[setting.family] = setting
    chosen = sorted(best.values(), key=lambda s: _mean(finals[s.label]))
    return Tuned(finals, chosen)


def report_settings(tuned: Tuned | None, *, naive: bool = True) -> list[Setting]:
    """What runs on the report seeds: the fixed contenders and the tuning's choices (a
    choice that is already a fixed contender is not run twice). ``naive=False`` leaves
    out ours naive, the anchor's merge run by ours."""
    fixed = [s for s in FIXED if naive or s != NAIVE]
    if tuned is None:
        return [*fixed, EXACT_ADAM]
    labels = {s.label for s in FIXED}
    return [*fixed, *(s for s in tuned.chosen if s.label not in labels)]


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values)
