"""A MergeStrategy over a small model, and an observer that keeps its reports."""

from __future__ import annotations

import numpy as np
import torch

from aggregation import OffsetCombiner, ServerOptimizer, ServerState, WeightedMean, sgd
from coordinator.strategy import MergeReport, MergeStrategy, RoundObserver


class Recorder(RoundObserver):
    def __init__(self) -> None:
        self.reports: list[MergeReport] = []

    def merged(self, report: MergeReport, state: ServerState) -> None:
        self.reports.append(report)


def make_strategy(
    theta: dict[str, np.ndarray], optimizer: ServerOptimizer | None = None,
    combiner: OffsetCombiner | None = None, **options: object,
) -> tuple[MergeStrategy, Recorder]:
    """A strategy whose theta is a copy of ``theta``; sgd lr 1 and the mean by default."""
    params = {k: torch.from_numpy(v.copy()) for k, v in theta.items()}
    opt = optimizer or sgd(lr=1.0)
    rec = Recorder()
    strategy = MergeStrategy(
        state=ServerState(params, opt.init(params)), combiner=combiner or WeightedMean(),
        optimizer=opt, observer=rec, **options,
    )
    return strategy, rec
