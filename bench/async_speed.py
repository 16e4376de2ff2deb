"""Async (FedBuff) against synchronous rounds with slow workers: wall-clock seconds to
0.90 central accuracy on digits, and the accuracy each reaches in equal wall-clock time.

10 clients (Flower's simulation engine), of which 3 are k times slower (node config
``slowdown``, client/slowdown.py), for k in --slow (5, then 10), over --seeds seeds
(0, 1, ...). Contenders, all on the same client settings and the same simulation: ours
async (adam; and sgd, FedBuff's own server step), ours sync (adam), Flower's FedAvg and
FedAdam. Async merges buffer-size = K/2 replies per version and runs twice as many
versions as the others run rounds (the same number of client updates merged).
``--client-cpus 0.2`` runs every client in its own Ray actor (a slow worker's sleep then
holds up no other, as on separate machines); ``--local-epochs`` sets the local work.

Tuning, the same budget for each contender with a server knob: ``--tune`` runs a grid of
server lr (FedAdam: eta) x beta1 (sgd: lr x momentum) on seed 100, which the report never
uses, and writes each contender's fastest setting to async_tuning.json; ``--tuned FILE``
makes the report use them (without it, the untuned defaults). Fastest: the fewest
seconds to 0.90 among the settings whose final accuracy is still >= 0.90. Flower's
FedAvg has no server knob: it runs as it is.

Wall-clock is the sum of the rounds' (versions') seconds, central evaluation included,
the engine's start-up excluded (a one-round warm-up runs first, unreported); "equal
time" is the shortest contender's total. Flower's simulation engine picks up pushed
messages every 0.1 s: with digits' few-ms local training that poll, not the slow
workers, dominates, so these figures understate what async saves with real workloads.
"""

from __future__ import annotations

import json
import math
import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from bench.common import base_parser, machine_line, markdown_table, results_dir, write_report
from bench.federated import Contender, Curve, flower_strategies, run_contenders
from client.slowdown import SLOWDOWN_KEY

TARGET = 0.90
WARM_UP = "warm-up (one sync round, not reported)"
TUNING_SEED = 100  # tuning runs on this seed only; the report's seeds are 0, 1, 2, ...
ADAM_LRS, BETA1S = (0.01, 0.03, 0.1), (0.5, 0.9)  # server lr (FedAdam: eta) x beta1
SGD_LRS, MOMENTA = (0.5, 1.0, 2.0), (0.0, 0.5)  # server lr x momentum (0: plain sgd)
ASYNC_ADAM, ASYNC_SGD, SYNC_ADAM = "ours async adam", "ours async sgd", "ours sync adam"
FEDAVG, FEDADAM = "Flower FedAvg", "Flower FedAdam"
CLIENTS, SLOW_NODES = 10, (0, 4, 8)


def slowed_bench_client(factors: Mapping[int, float]) -> ClientApp:
    """The benchmarks' ClientApp with ``slowdown`` set on the given partition ids."""
    from bench.federated import _evaluate, _train

    app = ClientApp()

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        pid = int(str(context.node_config.get("partition-id", -1)))
        if pid in factors:
            context.node_config[SLOWDOWN_KEY] = float(factors[pid])
        return _train(msg, context)

    @app.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        return _evaluate(msg, context)

    return app


def fedadam_float32(n: int, eta: float = 0.1, beta_1: float = 0.9) -> Any:
    """Flower's FedAdam, its model cast back to float32 before it is sent: its step turns
    the model float64 (a NumPy float64 step size), which our ClientApp refuses as a model
    that does not match."""
    from flwr.app import ArrayRecord
    from flwr.serverapp.strategy import FedAdam

    class FedAdam32(FedAdam):
        def aggregate_train(self, server_round, replies):  # type: ignore[override]
            arrays, metrics = super().aggregate_train(server_round, replies)
            if arrays is not None:
                arrays = ArrayRecord({k: t.float() for k, t in
                                      arrays.to_torch_state_dict().items()})
            return arrays, metrics

    return FedAdam32(fraction_train=1.0, fraction_evaluate=0.0, min_train_nodes=n,
                     min_evaluate_nodes=0, min_available_nodes=n, eta=eta, beta_1=beta_1)


@dataclass(frozen=True)
class Family:
    """One contender's family: its name, and the contender each grid point gives."""

    name: str
    make: Callable[[float, float], Contender]  # (server lr or eta, beta1 or momentum)
    grid: tuple[tuple[float, float], ...] = ()  # empty: no server knob to tune
    default: tuple[float, float] = (0.0, 0.0)  # untuned: the earlier one-seed settings


def families(clients: int, rounds: int) -> list[Family]:
    """The contenders. Each tunable one gets the same budget: a grid of server lr (FedAdam:
    eta) times beta1 (sgd: momentum, 0 = plain sgd). Flower's FedAvg has no server knob."""
    buffer = max(clients // 2, 1)
    run_async = {"merge": "async", "buffer-size": buffer, "concurrency": clients,
                 "num-server-rounds": rounds * clients // buffer}
    adam_grid = tuple((lr, b1) for lr in ADAM_LRS for b1 in BETA1S)
    sgd_grid = tuple((lr, m) for lr in SGD_LRS for m in MOMENTA)

    def ours(name: str, extra: Mapping[str, Any], optimizer: str) -> Callable[..., Contender]:
        def make(lr: float, b: float) -> Contender:
            if optimizer == "adam":
                opt: dict[str, Any] = {"optimizer": "adam", "beta1": b}
            else:  # heavy-ball momentum, or plain sgd at momentum 0
                opt = {"optimizer": "momentum", "momentum": b} if b else {"optimizer": "sgd"}
            return Contender(f"{name} (lr {lr:g}, {'b1' if optimizer == 'adam' else 'mom'} "
                             f"{b:g})", {**extra, **opt, "server-lr": lr})
        return make

    def fedadam(eta: float, b1: float) -> Contender:
        return Contender(f"{FEDADAM} (eta {eta:g}, b1 {b1:g})",
                         flower=lambda n: fedadam_float32(n, eta=eta, beta_1=b1))

    fedavg = {c.label: c for c in flower_strategies()}[FEDAVG]
    return [
        Family(ASYNC_ADAM, ours(ASYNC_ADAM, run_async, "adam"), adam_grid, (0.01, 0.8)),
        Family(ASYNC_SGD, ours(ASYNC_SGD, run_async, "sgd"), sgd_grid, (1.0, 0.0)),
        Family(SYNC_ADAM, ours(SYNC_ADAM, {}, "adam"), adam_grid, (0.1, 0.8)),
        Family(FEDAVG, lambda lr, b: fedavg),
        Family(FEDADAM, fedadam, adam_grid, (0.1, 0.9)),
    ]


def seconds_to(curve: Curve, target: float) -> float | None:
    elapsed = 0.0
    for acc, seconds in zip(curve.acc[1:], curve.round_s, strict=False):
        elapsed += seconds
        if acc >= target:
            return elapsed
    return None


def accuracy_at(curve: Curve, budget: float) -> float:
    """Central accuracy of the last round (version) committed within ``budget`` s."""
    elapsed, acc = 0.0, curve.acc[0]
    for a, seconds in zip(curve.acc[1:], curve.round_s, strict=False):
        elapsed += seconds
        if elapsed > budget:
            break
        acc = a
    return acc


def main(argv: list[str] | None = None) -> int:
    ap = base_parser(__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, default=None)
    ap.add_argument("--slow", default=None, help="comma list of slowdown factors k")
    ap.add_argument("--rounds", type=int, default=None, help="sync rounds (async: 2x versions)")
    ap.add_argument("--local-epochs", type=int, default=3)
    ap.add_argument("--client-cpus", type=float, default=1.0,
                    help="Ray CPUs per client: below 1, more clients run (and sleep) at once")
    ap.add_argument("--tune", action="store_true",
                    help=f"tune on seed {TUNING_SEED} (not reported) and write async_tuning.json")
    ap.add_argument("--tuned", type=Path, default=None,
                    help="async_tuning.json from --tune: each family's chosen setting")
    args = ap.parse_args(argv)
    from bench.common import quiet

    quiet()
    seeds = args.seeds or (1 if args.quick else 3)
    factors = [float(k) for k in (args.slow or ("5" if args.quick else "5,10")).split(",")]
    setting = Setting(rounds=args.rounds or (8 if args.quick else 15),
                      local_epochs=args.local_epochs, client_cpus=args.client_cpus)
    out, machine, t0 = results_dir(args.out), machine_line(), time.perf_counter()
    if args.tune:
        chosen, table = tune(setting, factors)
        (out / "async_tuning.json").write_text(json.dumps(chosen, indent=1) + "\n")
        title = f"Async speed: tuning on seed {TUNING_SEED} (not reported)"
    else:
        chosen = json.loads(args.tuned.read_text()) if args.tuned else {}
        missing = [f"{k:g}" for k in factors if args.tuned and f"{k:g}" not in chosen]
        if missing:
            ap.error(f"--tuned {args.tuned} has no settings for slowdown {', '.join(missing)} "
                     "(run --tune with those --slow values)")
        table = report(setting, factors, seeds, chosen)
        title = "Async (FedBuff) vs synchronous rounds with slow workers (digits)"
    took = f"{time.perf_counter() - t0:.0f} s in all."
    write_report(out, "async_tuning" if args.tune else "async_speed", "\n".join(
        [f"# {title}", "", f"Machine: {machine}.", f"{setting.describe()} {took}", "", table]))
    return 0


@dataclass(frozen=True)
class Setting:
    rounds: int  # sync rounds; async runs twice as many versions of half the replies
    local_epochs: int
    client_cpus: float

    def base(self, seed: int) -> dict[str, Any]:
        return {"num-server-rounds": self.rounds, "num-clients": CLIENTS, "min-nodes": CLIENTS,
                "fraction-evaluate": 0.0, "partition": "iid", "local-epochs": self.local_epochs,
                "local-lr": 0.3, "seed": seed}

    def run(self, seed: int, k: float, contenders: list[Contender]) -> dict[str, Curve]:
        curves = run_contenders(self.base(seed), [Contender(WARM_UP, {"num-server-rounds": 1}),
                                                  *contenders],
                                num_clients=CLIENTS, client_cpus=self.client_cpus,
                                client_app=slowed_bench_client({p: k for p in SLOW_NODES}))
        curves.pop(WARM_UP, None)
        return curves

    def describe(self) -> str:
        return (f"{CLIENTS} clients, {len(SLOW_NODES)} of them k times slower; iid split, "
                f"local epochs {self.local_epochs}, local lr 0.3; {self.client_cpus:g} Ray CPUs "
                f"per client; sync: {self.rounds} rounds; async: buffer {CLIENTS // 2}, "
                f"concurrency {CLIENTS}, {self.rounds * 2} versions, polynomial staleness "
                f"(a = 0.5). Seconds: sum of round (version) wall times.")


def rank(curve: Curve) -> tuple[bool, float, float]:
    """Tuning's order: first the settings whose final accuracy is still at the target (one
    that touches it and falls back is not a setting to use), the sooner there the better;
    then the rest, by final accuracy."""
    final = curve.acc[-1] if curve.acc and not curve.error else 0.0
    to = seconds_to(curve, TARGET)
    return final < TARGET, math.inf if curve.error or to is None else to, -final


def tune(setting: Setting, factors: list[float]) -> tuple[dict[str, Any], str]:
    """Every tunable family's grid on the tuning seed, per slowdown factor."""
    chosen: dict[str, Any] = {}
    rows = []
    for k in factors:
        fams = [f for f in families(CLIENTS, setting.rounds) if f.grid]
        points = [(f, g, f.make(*g)) for f in fams for g in f.grid]
        curves = setting.run(TUNING_SEED, k, [c for _, _, c in points])
        best: dict[str, tuple[tuple[bool, float, float], tuple[float, float]]] = {}
        for f, g, c in points:
            r = rank(curves[c.label])
            if f.name not in best or r < best[f.name][0]:
                best[f.name] = (r, g)
            rows.append([f"{k:g}x", c.label, _secs(r[1]), f"{-r[2]:.3f}"])
            print(" | ".join(rows[-1]), flush=True)
        chosen[f"{k:g}"] = {name: list(g) for name, (_, g) in best.items()}
        rows += [[f"{k:g}x", f"**chosen: {name} {g}**", "", ""] for name, (_, g) in best.items()]
    return chosen, markdown_table(["slow", "contender", f"s to {TARGET}", "final acc"], rows)


def report(setting: Setting, factors: list[float], seeds: int,
           chosen: Mapping[str, Any]) -> str:
    rows, summary = [], []
    for k in factors:
        picks = chosen.get(f"{k:g}", {})
        fams = families(CLIENTS, setting.rounds)
        labels = {f.name: f.make(*picks.get(f.name, f.default)).label for f in fams}
        per_seed: list[dict[str, tuple[float, float]]] = []
        for seed in range(seeds):
            curves = setting.run(seed, k, [f.make(*picks.get(f.name, f.default)) for f in fams])
            totals = {lb: sum(c.round_s) for lb, c in curves.items() if not c.error}
            budget = min(totals.values()) if totals else 0.0
            got = {}
            for f in fams:
                c = curves[labels[f.name]]
                to = seconds_to(c, TARGET) if not c.error else None
                got[f.name] = (math.inf if to is None else to, accuracy_at(c, budget))
                rows.append([f"{k:g}x", seed, c.label, c.error or _secs(got[f.name][0]),
                             f"{got[f.name][1]:.3f}", f"{budget:.1f}",
                             f"{c.acc[-1]:.3f}" if c.acc else "-",
                             f"{totals.get(c.label, 0.0):.1f}"])
                print(" | ".join(str(x) for x in rows[-1]), flush=True)
            per_seed.append(got)
        for mine in (ASYNC_ADAM, ASYNC_SGD):
            for other, target in ((SYNC_ADAM, 1 / 2), (FEDAVG, 1 / 3), (FEDADAM, None)):
                ratios = [_ratio(g[mine][0], g[other][0]) for g in per_seed]
                acc_ok = sum(g[mine][1] >= g[other][1] for g in per_seed)
                summary.append([f"{k:g}x", mine, other, " / ".join(f"{r:.2f}" for r in ratios),
                                f"{statistics.median(ratios):.2f}",
                                "-" if target is None else f"<= {target:.2f}",
                                "-" if target is None else
                                ("met" if statistics.median(ratios) <= target else "missed"),
                                f"{acc_ok} of {len(per_seed)}"])
    return "\n".join([
        markdown_table(["slow", "seed", "contender", f"s to {TARGET}", "acc at equal time",
                        "equal time (s)", "final acc", "total s"], rows),
        "",
        f"Ratios of seconds to {TARGET} (per seed, median; never there = infinite), and on "
        "how many seeds the async contender's accuracy at equal time was no lower:",
        "",
        markdown_table(["slow", "async", "against", "ratio per seed", "median", "target",
                        "", "acc no lower"], summary),
    ])


def _ratio(mine: float, other: float) -> float:
    """mine / other seconds; the other never there: 0 if mine got there, else infinite."""
    if math.isinf(other):
        return math.inf if math.isinf(mine) else 0.0
    return mine / other


def _secs(x: float) -> str:
    return "never" if math.isinf(x) else f"{x:.1f}"


if __name__ == "__main__":
    raise SystemExit(main())
