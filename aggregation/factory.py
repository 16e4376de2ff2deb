"""``make_combiner``: the combiner a run's config names, from aggregation/combiners.py
and aggregation/robust.py."""

from __future__ import annotations

from collections.abc import Callable

from aggregation.combiners import (
    CombinerError,
    CoordinateMedian,
    FisherWeightedMean,
    Krum,
    OffsetCombiner,
    TrimmedMean,
    WeightedMean,
)
from aggregation.robust import Bucketing, CenteredClipping, FLTrust
from aggregation.types import Params

BUCKETED = "bucketed-"


def make_combiner(
    name: str, *, trim_beta: float = 0.1, byzantine: int = 1, clip_norm: float = 0.0,
    bucket_size: int = 2, cc_tau: float = 0.0, cc_iterations: int = 3, seed: int = 0,
    server_update: Callable[[Params], Params] | None = None, fltrust_scale: str = "server",
    fltrust_byzantine: int = 0,
) -> OffsetCombiner:
    """The combiner a run's config names. ``server_update`` (theta -> the coordinator's
    own offset on its root data) is needed by ``fltrust`` alone; ``fltrust_scale`` and
    ``fltrust_byzantine``: the norm it rescales offsets to (``FLTrust``)."""
    if name.startswith(BUCKETED):
        return Bucketing(name.removeprefix(BUCKETED), bucket_size=bucket_size,
                         trim_beta=trim_beta, byzantine=byzantine, clip_norm=clip_norm,
                         seed=seed)
    if name == "centered-clipping":
        return CenteredClipping(tau=cc_tau, iterations=cc_iterations, clip_norm=clip_norm)
    if name == "fltrust":
        if server_update is None:
            raise CombinerError("combiner fltrust needs the coordinator's root data "
                                "(a server update); none was given")
        return FLTrust(server_update, scale=fltrust_scale, byzantine=fltrust_byzantine,
                       clip_norm=clip_norm)
    if name == "mean":
        return WeightedMean(clip_norm=clip_norm)
    if name == "fisher":
        return FisherWeightedMean(clip_norm=clip_norm)
    if name == "median":
        return CoordinateMedian(clip_norm=clip_norm)
    if name == "trimmed-mean":
        return TrimmedMean(beta=trim_beta, clip_norm=clip_norm)
    if name == "krum":
        return Krum(byzantine=byzantine, num_selected=1, clip_norm=clip_norm)
    if name == "multi-krum":
        return Krum(byzantine=byzantine, num_selected=None, clip_norm=clip_norm)
    raise CombinerError(f"unknown combiner {name!r}")
