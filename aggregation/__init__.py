"""The merge math: the objective's gradient from client offsets, offset combiners and
server optimizers. Pure torch: no flwr, no I/O, no logging (diagnostics are returned)."""

from aggregation.combiners import (
    CombineResult,
    CoordinateMedian,
    FisherWeightedMean,
    Krum,
    OffsetCombiner,
    TrimmedMean,
    WeightedMean,
)
from aggregation.factory import make_combiner
from aggregation.optimizers import (
    OptimizerState,
    ServerOptimizer,
    adagrad,
    adam,
    make_optimizer,
    momentum,
    sgd,
    yogi,
)
from aggregation.pseudo_grad import objective_gradient
from aggregation.robust import Bucketing, CenteredClipping, FLTrust
from aggregation.types import ClientUpdate, Params, ServerState

__all__ = [
    "Bucketing",
    "CenteredClipping",
    "FLTrust",
    "ClientUpdate",
    "CombineResult",
    "CoordinateMedian",
    "FisherWeightedMean",
    "Krum",
    "OffsetCombiner",
    "OptimizerState",
    "Params",
    "ServerOptimizer",
    "ServerState",
    "TrimmedMean",
    "WeightedMean",
    "adagrad",
    "adam",
    "make_combiner",
    "make_optimizer",
    "momentum",
    "objective_gradient",
    "sgd",
    "yogi",
]
