"""Accuracy against epsilon: user-level DP (dp central) at a few noise levels beside the
non-private run, on one simulated digits federation.

Every contender runs in one simulation (bench/federated.py), on the same clients, data,
initial model and local training; only the merge differs: the examples-weighted mean
(non-private), or the DP mean with clip C and noise multiplier z (a few z). Epsilon is
the accountant's (coordinator/privacy.py) for the rounds run, at the run's delta.

    python -m bench.privacy [--quick] [--clients 100] [--rounds 10] [--clip 0.3]
        [--noise 0.5,1,2,4,8,16] [--fraction 1.0]
"""

from __future__ import annotations

import time
from typing import Any

from bench.common import base_parser, machine_line, markdown_table, results_dir, write_report
from bench.federated import Contender, Curve, run_contenders


def base_config(args: Any) -> dict[str, Any]:
    return {
        "num-server-rounds": args.rounds, "num-clients": args.clients,
        "min-nodes": max(2, int(args.clients * args.fraction)),
        "fraction-train": args.fraction, "fraction-evaluate": 0.0, "dataset": "digits",
        "model": "mlp", "partition": "iid", "local-epochs": 5, "local-lr": 0.1,
        "batch-size": 32, "seed": 0, "device": "cpu", "optimizer": "momentum",
        "momentum": 0.9, "server-lr": 1.0,
    }


def contenders(clip: float, noises: list[float]) -> list[Contender]:
    out = [Contender("non-private (examples-weighted mean)")]
    for z in noises:
        out.append(Contender(f"dp central, z {z:g}", {
            "dp": "central", "dp-clip": clip, "dp-noise-multiplier": z}))
    return out


def epsilon_of(base: dict[str, Any], c: Contender, rounds: int) -> tuple[float, float] | None:
    from coordinator.config import parse_run_config
    from coordinator.privacy import plan_of

    plan = plan_of(parse_run_config({**base, **c.overrides}))
    return None if plan is None else (plan.epsilon(rounds), plan.delta)


def main(argv: list[str] | None = None) -> int:
    ap = base_parser(__doc__.split("\n")[0])
    ap.add_argument("--clients", type=int, default=None)
    ap.add_argument("--rounds", type=int, default=None)
    ap.add_argument("--clip", type=float, default=0.3)
    ap.add_argument("--noise", default=None, help="noise multipliers (default 0.5,1,2,4,8,16)")
    ap.add_argument("--fraction", type=float, default=1.0, help="fraction-train")
    args = ap.parse_args(argv)
    from bench.common import quiet

    quiet()
    args.clients = args.clients or (4 if args.quick else 100)
    args.rounds = args.rounds or (2 if args.quick else 10)
    default = "1" if args.quick else "0.5,1,2,4,8,16"
    noises = [float(z) for z in (args.noise or default).split(",")]
    out = results_dir(args.out)
    base = base_config(args)
    t0 = time.perf_counter()

    def progress(curve: Curve) -> None:
        last = f"{curve.acc[-1]:.3f}" if curve.acc else "-"
        print(f"  {curve.label}: final central accuracy {last} ({curve.seconds:.0f} s)"
              + (f" ERROR {curve.error}" if curve.error else ""), flush=True)

    runs = contenders(args.clip, noises)
    curves = run_contenders(base, runs, num_clients=args.clients, on_done=progress)
    rows = []
    for c in runs:
        curve = curves[c.label]
        eps = epsilon_of(base, c, args.rounds)
        rows.append([
            c.label,
            "inf (no noise)" if eps is None else f"{eps[0]:.3g}",
            "-" if eps is None else f"{eps[1]:.2g}",
            curve.error or (f"{curve.acc[-1]:.3f}" if curve.acc else "-"),
            f"{max(curve.acc[1:]):.3f}" if len(curve.acc) > 1 else "-",
        ])
    m = max(int(args.clients * args.fraction), base["min-nodes"])
    text = [
        "# Accuracy against epsilon (user-level DP, dp central)\n",
        f"Machine: {machine_line()}\n",
        f"Command: `python -m bench.privacy{' --quick' if args.quick else ''} --clients "
        f"{args.clients} --rounds {args.rounds} --clip {args.clip:g} --noise "
        f"{','.join(f'{z:g}' for z in noises)} --fraction {args.fraction:g}`; digits, IID "
        f"split over {args.clients} clients, {m} sampled per round (without replacement), "
        f"MLP 64-128-10, local SGD lr 0.1 batch 32, 5 local epochs, server momentum 0.9 "
        f"lr 1, {args.rounds} rounds; central accuracy on the held-out 20%; total "
        f"{time.perf_counter() - t0:.0f} s.\n",
        markdown_table(["merge", "epsilon", "delta", "final accuracy", "best accuracy"], rows),
        "",
    ]
    write_report(out, "privacy", "\n".join(text))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
