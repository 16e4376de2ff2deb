"""A ``Merge`` over a small model, driven the way Flower drives a strategy (one call per
round with the round's replies), keeping each round's MergeReport."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch
from flwr.app import ArrayRecord, Message, MetricRecord

from aggregation import OffsetCombiner, ServerOptimizer, ServerState, WeightedMean, sgd
from coordinator.grid import Reply
from coordinator.merge import Merge, MergeReport
from coordinator.privacy import PrivacyPlan
from coordinator.replies import ReplyValidator, UpdateLimits


class Recorder:
    def __init__(self) -> None:
        self.reports: list[MergeReport] = []


class MergeHarness:
    """``aggregate_train(round, replies)`` merges the replies (attributed to their sender,
    as fake replies have no request) and returns theta and the train metrics, as
    Flower's strategies do; ``state`` is the state after the latest round."""

    def __init__(self, merge: Merge, state: ServerState, recorder: Recorder) -> None:
        self.merge = merge
        self.state = state
        self.recorder = recorder

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        attributed = (Reply(str(m.metadata.src_node_id), m) for m in replies)
        self.state, report = self.merge(self.state, attributed)
        self.recorder.reports.append(report)
        if not report.stepped:
            return None, None
        return ArrayRecord(self.state.params), MetricRecord(report.train_metrics)


def make_strategy(
    theta: dict[str, np.ndarray], optimizer: ServerOptimizer | None = None,
    combiner: OffsetCombiner | None = None, *, max_norm_ratio: float = 0.0,
    limits: UpdateLimits | None = None, privacy: PrivacyPlan | None = None,
) -> tuple[MergeHarness, Recorder]:
    """A merge whose theta is a copy of ``theta``; sgd lr 1 and the mean by default."""
    params = {k: torch.from_numpy(v.copy()) for k, v in theta.items()}
    opt = optimizer or sgd(lr=1.0)
    combiner = combiner or WeightedMean()
    limits = limits or UpdateLimits(max_norm_ratio=max_norm_ratio)
    merge = Merge(ReplyValidator(limits, full_only=combiner.full_updates_only), combiner, opt,
                  privacy=privacy)
    rec = Recorder()
    return MergeHarness(merge, ServerState(params, opt.init(params)), rec), rec
