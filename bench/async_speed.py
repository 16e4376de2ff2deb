"""Async (FedBuff) against synchronous rounds with slow workers: wall-clock seconds to
0.90 central accuracy on digits, and the accuracy each reaches in equal wall-clock time.

10 clients (Flower's simulation engine), of which 3 are k times slower (node config
``slowdown``, client/slowdown.py), for k in --slow (5, then 10), over --seeds seeds.
Contenders, all on the same client settings and the same simulation: ours async (adam;
and sgd lr 1, FedBuff's own server step), ours sync (adam), Flower's FedAvg and FedAdam.
Async merges buffer-size = K/2 replies per version and runs twice as many versions as
the others run rounds (the same number of client updates merged). ``--client-cpus 0.2``
runs every client in its own Ray actor (a slow worker's sleep then holds up no other,
as on separate machines); ``--local-epochs`` sets the local work per reply.

Wall-clock is the sum of the rounds' (versions') seconds, central evaluation included,
the engine's start-up excluded (a one-round warm-up runs first, unreported); "equal
time" is the shortest contender's total. Flower's simulation engine picks up pushed
messages every 0.1 s: with digits' few-ms local training that poll, not the slow
workers, dominates, so these figures understate what async saves with real workloads.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from bench.common import base_parser, machine_line, markdown_table, results_dir, write_report
from bench.federated import Contender, Curve, flower_strategies, run_contenders
from client.slowdown import SLOWDOWN_KEY

TARGET = 0.90
WARM_UP = "warm-up (one sync round, not reported)"


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


def fedadam_float32(n: int, eta: float = 0.1) -> Any:
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
                     min_evaluate_nodes=0, min_available_nodes=n, eta=eta)


def contenders(clients: int, rounds: int) -> list[Contender]:
    buffer = max(clients // 2, 1)
    versions = rounds * clients // buffer
    run_async = {"merge": "async", "buffer-size": buffer, "concurrency": clients,
                 "num-server-rounds": versions}
    flower = {c.label: c for c in flower_strategies()}
    return [
        Contender(WARM_UP, {"num-server-rounds": 1}),  # the engine's start-up: not reported
        Contender("ours async adam (lr 0.01)",
                  {**run_async, "optimizer": "adam", "server-lr": 0.01, "beta1": 0.8}),
        Contender("ours async sgd lr 1", {**run_async, "optimizer": "sgd", "server-lr": 1.0}),
        Contender("ours sync adam (lr 0.1)",
                  {"optimizer": "adam", "server-lr": 0.1, "beta1": 0.8}),
        flower["Flower FedAvg"],
        Contender("Flower FedAdam (eta 0.1, float32)", flower=fedadam_float32),
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
    args = ap.parse_args(argv)
    from bench.common import quiet

    quiet()
    clients, slow_nodes = 10, (0, 4, 8)
    seeds = args.seeds or (1 if args.quick else 3)
    factors = [float(k) for k in (args.slow or ("5" if args.quick else "5,10")).split(",")]
    rounds = args.rounds or (8 if args.quick else 15)
    out = results_dir(args.out)
    machine = machine_line()
    base: dict[str, Any] = {"num-server-rounds": rounds, "num-clients": clients,
                            "min-nodes": clients, "fraction-evaluate": 0.0,
                            "partition": "iid", "local-epochs": args.local_epochs,
                            "local-lr": 0.3}
    rows, t0 = [], time.perf_counter()
    for k in factors:
        for seed in range(seeds):
            curves = run_contenders({**base, "seed": seed}, contenders(clients, rounds),
                                    num_clients=clients, client_cpus=args.client_cpus,
                                    client_app=slowed_bench_client({p: k for p in slow_nodes}))
            curves.pop(WARM_UP, None)
            totals = {label: sum(c.round_s) for label, c in curves.items() if not c.error}
            budget = min(totals.values()) if totals else 0.0
            for label, c in curves.items():
                to = seconds_to(c, TARGET)
                rows.append([f"{k:g}x", seed, label,
                             c.error or ("never" if to is None else f"{to:.1f}"),
                             f"{accuracy_at(c, budget):.3f}", f"{budget:.1f}",
                             f"{c.acc[-1]:.3f}" if c.acc else "-",
                             f"{totals.get(label, 0.0):.1f}"])
                print(" | ".join(str(x) for x in rows[-1]), flush=True)
    text = "\n".join([
        "# Async (FedBuff) vs synchronous rounds with slow workers (digits)",
        "",
        f"Machine: {machine}.",
        f"{clients} clients, {len(slow_nodes)} of them k times slower; iid split, local "
        f"epochs {args.local_epochs}, local lr 0.3; {args.client_cpus:g} Ray CPUs per "
        f"client; sync: {rounds} rounds; async: buffer {clients // 2}, "
        f"concurrency {clients}, {rounds * 2} versions, polynomial staleness (a = 0.5). "
        f"Seconds: sum of round (version) wall times; {time.perf_counter() - t0:.0f} s in all.",
        "",
        markdown_table(["slow", "seed", "contender", f"s to {TARGET}",
                        "acc at equal time", "equal time (s)", "final acc", "total s"], rows),
    ])
    write_report(out, "async_speed", text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
