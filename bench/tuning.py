"""The fair tuning protocol of bench.convergence: every contender gets the same budget
of configurations, chosen on tuning seeds only, and is reported on other seeds.

- A contender is a family (ours adam, Flower's FedAdam, ...) and its search grid.
- Budget: every family tries exactly ``budget`` configurations. The client's learning
  rate is an axis of every family (it is the one knob FedAvg has, and the best server
  step depends on it); a family with server knobs crosses the client rates with its
  server grid, FedAvg spends its whole budget on client rates (a finer grid over the
  same range). Local work (epochs, batch size) is the same for all and never tuned.
- Selection (``select``): per configuration, over the tuning runs only, the mean rounds
  to the target (a run that never reaches it counts rounds + 1), ties broken by the
  higher mean accuracy of the last 5 rounds.
"""

from __future__ import annotations

import itertools
import statistics
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

from bench.federated import Contender, Curve

TAIL_ROUNDS = 5  # the tie-break: mean accuracy of the last rounds
CLIENT_LRS = (0.05, 0.1, 0.2, 0.4, 0.8)  # local SGD lr, the axis every family tunes


class ProtocolError(ValueError):
    """The protocol was asked for something that would make it unfair (a reported seed
    among the tuning seeds, a family with another budget, a missing tuning run)."""


@dataclass(frozen=True)
class Config:
    """One configuration of a family: its knobs (for the tables) and how to run it."""

    family: str
    knobs: tuple[tuple[str, float], ...]  # ("client lr", 0.1), ("server lr", 0.1), ...

    @property
    def local_lr(self) -> float:
        return dict(self.knobs)["client lr"]

    @property
    def label(self) -> str:
        return f"{self.family} [" + ", ".join(f"{k} {v:g}" for k, v in self.knobs) + "]"


@dataclass(frozen=True)
class Family:
    """A contender: its name, its server grid (one dict of knobs per point; empty for
    FedAvg) and how a point becomes a runnable Contender."""

    name: str
    server_grid: tuple[tuple[tuple[str, float], ...], ...]
    make: Callable[[Mapping[str, float], str], Contender]

    def configs(self, client_lrs: Sequence[float]) -> list[Config]:
        points = self.server_grid or ((),)
        return [Config(self.name, (("client lr", lr), *point))
                for lr, point in itertools.product(client_lrs, points)]

    def contender(self, config: Config) -> Contender:
        knobs = dict(config.knobs)
        return self.make(knobs, config.label)


def grid(**axes: Iterable[float]) -> tuple[tuple[tuple[str, float], ...], ...]:
    """The product of named axes, each point a tuple of (knob, value)."""
    names = [n.replace("_", " ") for n in axes]
    return tuple(tuple(zip(names, values, strict=True))
                 for values in itertools.product(*axes.values()))


def log_grid(lo: float, hi: float, n: int) -> tuple[float, ...]:
    """``n`` values from ``lo`` to ``hi``, evenly spaced in log scale (3 digits)."""
    if n == 1:
        return (lo,)
    ratio = (hi / lo) ** (1 / (n - 1))
    return tuple(float(f"{lo * ratio ** i:.3g}") for i in range(n))


def budget_configs(families: Sequence[Family], budget: int,
                   client_lrs: Sequence[float] = CLIENT_LRS) -> dict[str, list[Config]]:
    """Every family's configurations, exactly ``budget`` each: server grid x client
    rates, or (no server knob) ``budget`` client rates over the same range."""
    out = {}
    for fam in families:
        if fam.server_grid:
            configs = fam.configs(client_lrs)
        else:
            configs = fam.configs(log_grid(min(client_lrs), max(client_lrs), budget))
        if len(configs) != budget:
            raise ProtocolError(f"family {fam.name!r} has {len(configs)} configurations, "
                                f"the budget is {budget} for every family")
        out[fam.name] = configs
    return out


@dataclass(frozen=True)
class Score:
    """A configuration's tuning score; smaller is better."""

    mean_rounds: float  # to the target, never = rounds + 1
    tail_acc: float  # mean over the runs of the mean of the last TAIL_ROUNDS rounds

    @property
    def key(self) -> tuple[float, float]:
        return (self.mean_rounds, -self.tail_acc)


def score(curves: Sequence[Curve], target: float, rounds: int) -> Score:
    reached = [c.rounds_to(target) for c in curves]
    tails = [statistics.fmean(c.acc[-TAIL_ROUNDS:]) if c.acc and not c.error else 0.0
             for c in curves]
    return Score(statistics.fmean(r if r is not None and not c.error else rounds + 1
                                  for r, c in zip(reached, curves, strict=True)),
                 statistics.fmean(tails))


def select(configs: Sequence[Config], runs: Mapping[tuple[str, int], Curve],
           tuning_seeds: Sequence[int], *, target: float,
           rounds: int) -> tuple[Config, dict[Config, Score]]:
    """The configuration with the best score over ``tuning_seeds``' runs (``runs`` is
    keyed by (config label, seed)); other seeds' runs are never read."""
    if not tuning_seeds:
        raise ProtocolError("no tuning seed")
    scores = {}
    for cfg in configs:
        missing = [s for s in tuning_seeds if (cfg.label, s) not in runs]
        if missing:
            raise ProtocolError(f"no tuning run of {cfg.label} on seed(s) {missing}")
        scores[cfg] = score([runs[(cfg.label, s)] for s in tuning_seeds], target, rounds)
    best = min(configs, key=lambda c: scores[c].key)  # first in grid order on a tie
    return best, scores


def check_seeds(tuning: Sequence[int], report: Sequence[int]) -> None:
    """A reported seed must not be a tuning seed."""
    shared = sorted(set(tuning) & set(report))
    if shared:
        raise ProtocolError(f"seed(s) {shared} are both tuning and reported seeds")
    if not tuning or not report:
        raise ProtocolError("the protocol needs at least one tuning and one reported seed")


# --- the contenders -------------------------------------------------------------------
# Ours and Flower's counterpart search the same server grid: adam and FedAdam over
# (server lr, beta1), our momentum and FedAvgM over (server lr, momentum); FedProx over
# its proximal mu; FedAvg has no server knob. tau and beta2 keep each one's default
# (1e-3 and 0.99 in both).

def _ours(options: Mapping[str, object]) -> Callable[[Mapping[str, float], str], Contender]:
    def make(k: Mapping[str, float], label: str) -> Contender:
        extra = {name: k[knob] for knob, name in (("server lr", "server-lr"),
                                                  ("beta1", "beta1"),
                                                  ("momentum", "momentum")) if knob in k}
        return Contender(label, {**options, **extra, "local-lr": k["client lr"]})
    return make


def _flower(strategy: str) -> Callable[[Mapping[str, float], str], Contender]:
    def make(k: Mapping[str, float], label: str) -> Contender:
        from flwr.serverapp import strategy as flwr_strategy

        from bench.federated import flower_options

        cls = getattr(flwr_strategy, strategy)
        kwargs = {name: k[knob] for knob, name in (
            ("eta", "eta"), ("beta1", "beta_1"), ("server lr", "server_learning_rate"),
            ("momentum", "server_momentum"), ("mu", "proximal_mu")) if knob in k}
        extra: dict[str, float] = {"local-lr": k["client lr"]}
        if "mu" in k:  # our trainer adds (mu/2)||x - theta||^2 when the round says so
            extra["prox-mu"] = k["mu"]
        return Contender(label, flower=lambda n: cls(**flower_options(n), **kwargs),
                         train_extra=extra)
    return make


ADAM_GRID = grid(server_lr=(0.03, 0.1, 0.3), beta1=(0.9, 0.8))
MOMENTUM_GRID = grid(server_lr=(0.5, 1.0, 2.0), momentum=(0.9, 0.7))
FAMILIES = (
    Family("ours adam", ADAM_GRID, _ours({"optimizer": "adam"})),
    Family("ours momentum", MOMENTUM_GRID, _ours({"optimizer": "momentum"})),
    Family("Flower FedAdam", grid(eta=(0.03, 0.1, 0.3), beta1=(0.9, 0.8)),
           _flower("FedAdam")),
    Family("Flower FedAvgM", MOMENTUM_GRID, _flower("FedAvgM")),
    Family("Flower FedProx", grid(mu=(0.003, 0.01, 0.03, 0.1, 0.3, 1.0)),
           _flower("FedProx")),
    Family("Flower FedAvg", (), _flower("FedAvg")),
)
OURS = "ours adam"  # the contender the targets are about
