"""The privacy accountant: what a run's rounds spend, as (epsilon, delta) at user level.

The mechanism (clip, sum, noise: ``aggregation.dp.GaussianSumMean``) and the accountant
are separate; the accountant is Google's ``dp-accounting`` (its RDP accountant), never
arithmetic of ours. What it is told (docs/privacy.md says why):

- Neighbouring federations differ in one user's data, replaced by anyone else's
  (``REPLACE_ONE``): the population N of clients is public, and the sum of clipped
  offsets moves by at most 2C, so the vector query's noise multiplier is z C / 2C = z / 2.
  The adaptive clip's count of unclipped offsets moves by at most 1: its multiplier is
  its noise's standard deviation.
- Each round samples a fixed number m of the N clients uniformly without replacement,
  which is what Flower's ``sample_nodes`` does (``SampledWithoutReplacementDpEvent``,
  Wang, Balle and Kasiviswanathan 2019); with m = N it is the plain Gaussian mechanism.
- Rounds compose: the same event, once per committed round.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from typing import Protocol

from dp_accounting import NeighboringRelation, dp_event
from dp_accounting.rdp import RdpAccountant

from aggregation.dp import AdaptiveClip, GaussianSumMean


class DPSettings(Protocol):
    """The run-config fields this module reads (``MergeConfig`` has them): typed here so
    that the config, which validates a budget through ``plan_of``, is not imported back."""

    dp: str
    dp_clip: float
    dp_noise_multiplier: float
    dp_adaptive_clip: bool
    dp_target_quantile: float
    dp_clip_lr: float
    dp_quantile_noise: float
    dp_delta: float
    dp_epsilon_budget: float
    num_clients: int
    fraction_train: float
    min_nodes: int

DEMO_SETTINGS = {"dp-clip": 0.3, "dp-noise-multiplier": 1.0}
"""What ``fedmerge demo --dp central`` runs with unless told otherwise."""


@dataclass(frozen=True)
class RoundMechanism:
    """One round's release, as the accountant sees it."""

    population: int  # N: the clients a round samples from
    sample_size: int  # m: the clients it samples, the DP mean's fixed denominator
    noise_multiplier: float  # z: the sum's noise standard deviation over the clip
    count_stddev: float | None = None  # the adaptive clip's count noise; None: fixed clip

    def event(self) -> dp_event.DpEvent:
        """The round as a ``DpEvent``: Gaussian releases on a sample without replacement."""
        releases: list[dp_event.DpEvent] = [dp_event.GaussianDpEvent(self.noise_multiplier / 2)]
        if self.count_stddev is not None:
            releases.append(dp_event.GaussianDpEvent(self.count_stddev))
        inner = releases[0] if len(releases) == 1 else dp_event.ComposedDpEvent(releases)
        return dp_event.SampledWithoutReplacementDpEvent(
            self.population, self.sample_size, inner)


@cache
def epsilon(mechanism: RoundMechanism, rounds: int, delta: float) -> float:
    """Epsilon at ``delta`` after ``rounds`` rounds of ``mechanism`` (0 for none)."""
    if rounds <= 0:
        return 0.0
    accountant = RdpAccountant(neighboring_relation=NeighboringRelation.REPLACE_ONE)
    accountant.compose(mechanism.event(), rounds)
    return float(accountant.get_epsilon(delta))


@dataclass(frozen=True)
class PrivacyPlan:
    """A run's mechanism, its delta and its budget (0: none)."""

    mechanism: RoundMechanism
    delta: float
    budget: float = 0.0

    def epsilon(self, rounds: int) -> float:
        return epsilon(self.mechanism, rounds, self.delta)

    def rounds_allowed(self, limit: int) -> int:
        """The most rounds, up to ``limit``, whose epsilon stays within the budget.
        Epsilon grows with the rounds, so a bisection finds it."""
        if self.budget <= 0:
            return limit
        lo, hi = 0, limit  # epsilon(lo) <= budget; find the largest such lo
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if self.epsilon(mid) <= self.budget:
                lo = mid
            else:
                hi = mid - 1
        return lo

    def stop_reason(self, next_round: int) -> str:
        """Why round ``next_round`` is not run: it would exceed the budget."""
        return (
            f"privacy budget: round {next_round} would bring epsilon to "
            f"{self.epsilon(next_round):.4g} > dp-epsilon-budget {self.budget:g} "
            f"(delta {self.delta:.3g}); stopped after round {next_round - 1} at epsilon "
            f"{self.epsilon(next_round - 1):.4g}"
        )


def sample_size(num_clients: int, fraction: float, min_nodes: int) -> int:
    """The clients Flower's FedAvg samples per round out of ``num_clients`` connected."""
    return max(int(num_clients * fraction), min_nodes)


def default_delta(num_clients: int) -> float:
    """1 / N^1.1: below 1/N (at delta >= 1/N, publishing each user's data with
    probability delta, about one user per run, would be (0, delta)-DP)."""
    return num_clients ** -1.1


def plan_of(cfg: DPSettings) -> PrivacyPlan | None:
    """The run's privacy plan, or None when ``dp`` is off."""
    if cfg.dp == "off":
        return None
    m = sample_size(cfg.num_clients, cfg.fraction_train, cfg.min_nodes)
    count = cfg.dp_quantile_noise * m if cfg.dp_adaptive_clip else None
    return PrivacyPlan(
        RoundMechanism(cfg.num_clients, m, cfg.dp_noise_multiplier, count),
        cfg.dp_delta or default_delta(cfg.num_clients),
        cfg.dp_epsilon_budget,
    )


def dp_combiner(cfg: DPSettings, *, seed: int | None = None) -> GaussianSumMean:
    """The DP mean a run's config asks for, with the same m and count noise as its plan."""
    plan = plan_of(cfg)
    assert plan is not None, "dp_combiner needs dp central"
    mech = plan.mechanism
    adaptive = None if mech.count_stddev is None else AdaptiveClip(
        cfg.dp_target_quantile, cfg.dp_clip_lr, mech.count_stddev)
    return GaussianSumMean(
        clip=cfg.dp_clip, noise_multiplier=mech.noise_multiplier,
        denominator=mech.sample_size, adaptive=adaptive,
        seed=seed,
    )
