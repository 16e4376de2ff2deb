"""Server Adam's (server-lr, tau, beta1) against Flower's FedAdam (eta 0.1): rounds to
0.90 central accuracy on every (split, seed) of bench.convergence, in its setting
(10 clients, MLP, 30 rounds, local SGD lr 0.05, 2 epochs).

Superseded by bench.convergence's fair protocol (bench/tuning.py): this sweep runs on
the reported seeds themselves and against FedAdam at its default eta; kept for the
record of the older tables.

    python -m bench.adam_sweep [--quick] [--seeds 3] [--grid 0.1/1e-3/0.8,0.05/1e-3/0.9]
"""

from __future__ import annotations

import time

from bench.common import base_parser, machine_line, markdown_table, results_dir, write_report
from bench.convergence import SPLIT_TITLES, SPLITS, TARGET, base_config
from bench.federated import Contender, Curve, flower_strategies, run_contenders

# (server-lr, tau, beta1)
DEFAULT_GRID = [(0.05, 1e-3, 0.9), (0.1, 1e-3, 0.9), (0.1, 1e-2, 0.9), (0.07, 3e-3, 0.9),
                (0.15, 1e-2, 0.9), (0.07, 1e-3, 0.8), (0.1, 1e-3, 0.8), (0.15, 1e-3, 0.8),
                (0.1, 1e-3, 0.7), (0.1, 1e-3, 0.5)]


def adam(lr: float, tau: float, beta1: float) -> Contender:
    return Contender(f"adam lr {lr:g} tau {tau:g} b1 {beta1:g}",
                     {"optimizer": "adam", "server-lr": lr, "tau": tau, "beta1": beta1})


def main(argv: list[str] | None = None) -> int:
    ap = base_parser(__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--grid", default=None, help="LR/TAU/BETA1,... (default: the grid above)")
    args = ap.parse_args(argv)
    from bench.common import quiet

    quiet()
    t0 = time.perf_counter()
    grid = ([tuple(float(x) for x in item.split("/")) for item in args.grid.split(",")]
            if args.grid else DEFAULT_GRID[:2] if args.quick else DEFAULT_GRID)
    rounds, clients = (2, 3) if args.quick else (30, 10)
    seeds = 1 if args.quick else args.seeds
    splits = ["dirichlet-0.5"] if args.quick else list(SPLITS)
    flower = next(c for c in flower_strategies() if "FedAdam" in c.label)
    contenders = [*(adam(*point) for point in grid), flower]

    runs: list[tuple[str, int, dict[str, Curve]]] = []
    for split in splits:
        for seed in range(seeds):
            print(f"== {split}, seed {seed}", flush=True)
            curves = run_contenders(base_config(rounds, clients, seed, split), contenders,
                                    num_clients=clients)
            runs.append((split, seed, curves))

    def reached(curve: Curve) -> int:  # never counts as one round past the end
        r = curve.rounds_to(TARGET)
        return rounds + 1 if r is None else r

    rows = []
    for c in contenders:
        ours = [reached(curves[c.label]) for _, _, curves in runs]
        theirs = [reached(curves[flower.label]) for _, _, curves in runs]
        finals = [(curves[c.label].acc or [0.0])[-1] for _, _, curves in runs]
        rows.append([
            c.label, " ".join(str(r) for r in ours), sum(ours),
            "/".join(str(sum(f(a, b) for a, b in zip(ours, theirs, strict=True)))
                     for f in (int.__lt__, int.__eq__, int.__gt__)),
            f"{sum(finals) / len(finals):.3f}",
        ])
    columns = ", ".join(f"{SPLIT_TITLES[s]} seed {seed}" for s, seed, _ in runs)
    text = [
        "# Server Adam sweep against Flower's FedAdam\n",
        f"Machine: {machine_line()}\n",
        f"Command: `python -m bench.adam_sweep{' --quick' if args.quick else ''}`; "
        f"{clients} clients, {rounds} rounds, total {time.perf_counter() - t0:.0f} s. "
        f"Rounds to {TARGET} per run ({columns}; {rounds + 1} = never); "
        "W/T/L = runs where the row needs fewer / as many / more rounds than Flower's "
        "FedAdam.\n",
        markdown_table(["contender", f"rounds to {TARGET} per run", "sum", "W/T/L vs FedAdam",
                        "mean final acc"], rows),
    ]
    write_report(results_dir(args.out), "adam_sweep", "\n".join(text))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
