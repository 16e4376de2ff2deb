"""Robust merging under attack on non-IID digits: splits x attacks x defences x server
optimizers, against the honest baselines, and each defence's merge time.

Setting: 10 clients (partitions of digits), 3 of them hostile (partitions 1, 4, 7), all
sampled every round, MLP, local SGD lr 0.05, batch 32, 2 local epochs, central accuracy
on the held-out split after the last round. The honest-7 baseline is the same federation
with the 7 honest partitions only (plain mean); the honest-10 row is every defence with
nobody attacking. Federations run in this process (bench/inprocess.py: the real
ClientApp functions, round loop, Merge and store, without Ray); attacks are
bench/attacks.py.

    python -m bench.robust [--quick] [--seeds 0,1,2] [--rounds 15]
        [--splits dirichlet-0.1,2-classes] [--attacks little,ipm] [--defences mean,...]
        [--optimizers sgd,adam] [--merge-time 10x10M] [--no-grid]
"""

from __future__ import annotations

import json
import logging
import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from bench.attacks import ATTACKS, Adversary
from bench.common import (
    Variant,
    base_parser,
    fmt_n,
    machine_line,
    markdown_table,
    med_min_max,
    parse_n,
    quiet,
    results_dir,
    round_robin,
    write_report,
)
from bench.inprocess import run_inprocess
from client.metrics import NUM_CLIENTS as MERGED

NUM_CLIENTS = 10
HOSTILE = frozenset({1, 4, 7})
SPLITS: dict[str, dict[str, Any]] = {
    "dirichlet-0.1": {"partition": "dirichlet", "dirichlet-alpha": 0.1},
    "2-classes": {"partition": "pathological", "classes-per-client": 2},
}
OPTIMIZERS: dict[str, dict[str, Any]] = {
    "sgd": {"optimizer": "sgd", "server-lr": 1.0},
    # bench/convergence.py's tuned FedAdam
    "adam": {"optimizer": "adam", "server-lr": 0.1, "beta1": 0.8},
}
DEFENCES: dict[str, dict[str, Any]] = {
    "mean": {},
    "mean+max-norm-ratio": {"max-norm-ratio": 3.0},
    "mean+max-norm-ratio-f3": {"max-norm-ratio": 3.0, "norm-ratio-byzantine": 3},
    "median": {"combiner": "median"},
    "trimmed-mean": {"combiner": "trimmed-mean", "trim-beta": 0.3},
    "multi-krum": {"combiner": "multi-krum", "krum-byzantine": 3},
    "bucketed-median": {"combiner": "bucketed-median", "bucket-size": 2},
    "bucketed-trimmed-mean": {"combiner": "bucketed-trimmed-mean", "bucket-size": 2,
                              "trim-beta": 0.3},
    "centered-clipping": {"combiner": "centered-clipping"},
    "centered-clipping+max-norm-ratio": {"combiner": "centered-clipping",
                                         "max-norm-ratio": 3.0},
    "fltrust": {"combiner": "fltrust"},
    "fltrust+median-scale": {"combiner": "fltrust", "fltrust-scale": "median"},
    "fltrust+median-scale-f3": {"combiner": "fltrust", "fltrust-scale": "median",
                                "fltrust-byzantine": 3},
}


def base_config(split: str, optimizer: str, rounds: int, seed: int) -> dict[str, Any]:
    return {"num-server-rounds": rounds, "fraction-evaluate": 0.0, "task": "digits",
            "local-epochs": 2, "local-lr": 0.05, "batch-size": 32, "seed": seed,
            "device": "cpu", **SPLITS[split], **OPTIMIZERS[optimizer]}


def federation(config: dict[str, Any], partitions: Sequence[int],
               adversary: Adversary | None = None, *, verbose: bool = False) -> dict[str, Any]:
    """Final central accuracy, seconds, and whether theta moved every round that had a
    valid honest reply (``stalled``: the rounds it did not)."""
    stalled: list[int] = []

    def on_commit(rec) -> None:
        # a reply that passed validation has its partition id recorded
        honest_valid = any(u.partition_id is not None and u.partition_id not in HOSTILE
                           for u in rec.updates)
        if honest_valid and not rec.metrics.get(MERGED):
            stalled.append(rec.number)

    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="fedmerge-robust-") as out:
        result = run_inprocess({**config, "out-dir": out}, partitions, NUM_CLIENTS, adversary,
                               on_commit=on_commit)
    row = {"acc": result.central_accuracy, "s": time.perf_counter() - t0, "stalled": stalled}
    if verbose:
        label = config.get("combiner", "mean") + (
            "+max-norm-ratio" if config.get("max-norm-ratio") else "")
        print(f"  {label} {adversary.attack if adversary else ''} "
              f"{len(partitions)} clients: {row['acc']:.3f} ({row['s']:.1f} s)", flush=True)
    return row


def run_grid(splits, optimizers, attacks, defences, seeds, rounds,
             verbose: bool = True) -> dict[str, Any]:
    everyone = list(range(NUM_CLIENTS))
    honest = [p for p in everyone if p not in HOSTILE]
    out: dict[str, Any] = {}
    for split in splits:
        for opt in optimizers:
            for seed in seeds:
                base = base_config(split, opt, rounds, seed)
                key = f"{split}/{opt}/{seed}"
                print(f"== {key}", flush=True)
                cell: dict[str, Any] = {"honest-7": federation(base, honest, verbose=verbose)}
                cell["honest-10"] = {d: federation({**base, **DEFENCES[d]}, everyone,
                                                   verbose=verbose) for d in defences}
                for attack in attacks:
                    adversary = Adversary(attack, HOSTILE, seed)
                    cell[attack] = {d: federation({**base, **DEFENCES[d]}, everyone, adversary,
                                                  verbose=verbose) for d in defences}
                out[key] = cell
                print(f"{key}: honest-7 {cell['honest-7']['acc']:.3f}; " + "; ".join(
                    f"{a}: " + " ".join(f"{d} {cell[a][d]['acc']:.3f}" for d in defences)
                    for a in ["honest-10", *attacks]), flush=True)
    return out


def grid_tables(grid: dict[str, Any], splits, optimizers, attacks, defences,
                seeds) -> str:
    """Per split and optimizer: each defence's final accuracy minus the honest-7 baseline
    (points, mean over seeds; worst seed in brackets)."""
    text = []
    for split in splits:
        for opt in optimizers:
            cells = [grid[f"{split}/{opt}/{s}"] for s in seeds]
            base = [c["honest-7"]["acc"] for c in cells]
            rows = []
            for d in defences:
                if any(d not in c["honest-10"] for c in cells):
                    continue  # not run in this cell
                row = [d]
                for a in ["honest-10", *attacks]:
                    diffs = [100 * (c[a][d]["acc"] - b) for c, b in zip(cells, base, strict=True)]
                    stalled = sum(len(c[a][d]["stalled"]) for c in cells)
                    row.append(f"{statistics.fmean(diffs):+.1f} ({min(diffs):+.1f})"
                               + (f" stalled {stalled}" if stalled else ""))
                rows.append(row)
            mean10 = [100 * (c["honest-10"]["mean"]["acc"] - b) if "mean" in defences else 0
                      for c, b in zip(cells, base, strict=True)]
            text.append(
                f"### {split}, {opt}: honest-7 baseline "
                f"{100 * statistics.fmean(base):.1f}% (seeds {', '.join(map(str, seeds))})"
                + (f"; plain mean of all 10 honest: {statistics.fmean(mean10):+.1f}"
                   if "mean" in defences else "") + "\n\n"
                + markdown_table(["defence", "no attack (10 honest)", *attacks], rows) + "\n")
    return "\n".join(text)


def recommend(grids: Sequence[dict[str, Any]], attacks, defences) -> str:
    """Each defence over every cell of ``grids`` (split x optimizer x seed): its worst
    cost against the plain mean with nobody attacking, and its mean and worst distance to
    the honest-7 baseline under attack. The recommendation: the best mean under attack
    among the defences that cost at most 1 point with nobody attacking."""
    cells = [c for g in grids for c in g.values()]
    rows, eligible = [], []
    for d in defences:
        honest = [100 * (c["honest-10"][d]["acc"] - c["honest-10"]["mean"]["acc"])
                  for c in cells if d in c["honest-10"] and "mean" in c["honest-10"]]
        hit = [100 * (c[a][d]["acc"] - c["honest-7"]["acc"])
               for c in cells for a in attacks if a in c and d in c[a]]
        if not honest or not hit:
            continue
        within = sum(x >= -3 for x in hit)
        rows.append([d, f"{min(honest):+.1f}", f"{statistics.fmean(hit):+.1f}",
                     f"{min(hit):+.1f}", f"{within} of {len(hit)}"])
        if min(honest) >= -1.0:
            eligible.append((statistics.fmean(hit), d))
    best = max(eligible)[1] if eligible else "none"
    return ("### Which defence\n\n" + markdown_table(
        ["defence", "no attack: worst vs the plain mean", "under attack: mean vs honest-7",
         "worst", "cells within 3 points"], rows)
        + "\n\nRecommended (best mean under attack among those within 1 point of the "
        f"plain mean with nobody attacking): **{best}**\n")


def merge_times(k: int, p: int, defences: Sequence[str], reps: int) -> str:
    """Seconds of one ``combine`` of k random offsets of p float32 values, per defence,
    against the plain mean (same repetitions, interleaved). FLTrust's server update is a
    fixed offset here: its training on the root data is not counted."""
    from aggregation import ClientUpdate, make_combiner
    from aggregation.combiners import update_norm
    from bench.common import model_layout, random_params

    layout = model_layout(p)
    template = random_params(layout, 0)
    ups = [ClientUpdate(o, 100.0, client_id=str(i), norm=update_norm(o))
           for i, o in enumerate(random_params(layout, i + 1) for i in range(k))]
    server = random_params(layout, 99)
    names = {"mean": "mean", "median": "median", "trimmed-mean": "trimmed-mean",
             "multi-krum": "multi-krum", "bucketed-median": "bucketed-median",
             "bucketed-trimmed-mean": "bucketed-trimmed-mean",
             "centered-clipping": "centered-clipping", "fltrust": "fltrust"}
    chosen = ["mean", *[d for d in defences if d in names and d != "mean"]]
    variants = []
    for d in chosen:
        comb = make_combiner(names[d], trim_beta=0.3, byzantine=3,
                             server_update=lambda theta: server)
        variants.append(Variant(d, lambda c=comb: c.combine(ups, template)))
    times = round_robin(variants, reps)
    rows = [[d, med_min_max(times[d], 1.0, 2),
             med_min_max([a / b for a, b in zip(times[d], times["mean"], strict=True)], 1, 1)]
            for d in chosen]
    return (f"### Merge time, {k} offsets x {fmt_n(p)} float32 ({reps} repetitions)\n\n"
            + markdown_table(["combiner", "seconds: median (min-max)", "x the mean"], rows))


def merge_grids(grids: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Runs of the same cells (split/optimizer/seed) with other defences, as one grid: per
    cell, the defences of every run; the honest-7 baseline of the first run that has it
    (the same federation in each: the runs are seeded)."""
    out: dict[str, Any] = {}
    for grid in grids:
        for key, cell in grid.items():
            have = out.setdefault(key, {})
            for column, value in cell.items():
                if column == "honest-7":
                    have.setdefault(column, value)
                else:
                    have[column] = {**have.get(column, {}), **value}
    return out


def main(argv: list[str] | None = None) -> int:
    ap = base_parser(__doc__.splitlines()[0])
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--splits", default=",".join(SPLITS))
    ap.add_argument("--attacks", default=",".join(ATTACKS))
    ap.add_argument("--defences", default=",".join(DEFENCES))
    ap.add_argument("--optimizers", default=",".join(OPTIMIZERS))
    ap.add_argument("--merge-time", default="10x10M", help="KxP, or 'none'")
    ap.add_argument("--merge-reps", type=int, default=3)
    ap.add_argument("--no-grid", action="store_true", help="only the merge times")
    ap.add_argument("--name", default="robust", help="report name under the results folder")
    ap.add_argument("--from", dest="from_", default="",
                    help="comma-separated JSON files of earlier runs: report them together "
                         "(run nothing but the merge times)")
    args = ap.parse_args(argv)
    if args.quick:
        args.seeds, args.rounds, args.splits = "0", 5, "dirichlet-0.1"
        args.attacks, args.defences, args.optimizers = "little", "mean,centered-clipping", "sgd"
        args.merge_time = "10x100K"
    seeds = [int(s) for s in args.seeds.split(",")]
    pick = {name: [x for x in getattr(args, name).split(",") if x]
            for name in ("splits", "attacks", "defences", "optimizers")}
    for name, known in (("splits", SPLITS), ("attacks", ATTACKS), ("defences", DEFENCES),
                        ("optimizers", OPTIMIZERS)):
        unknown = sorted(set(pick[name]) - set(known))
        if unknown:
            ap.error(f"--{name}: unknown {unknown}; known: {list(known)}")
    quiet()
    logging.getLogger("flwr").setLevel(logging.ERROR)
    torch.set_num_threads(1)  # clients train one after the other; the machine is shared
    out = results_dir(args.out)
    t0 = time.perf_counter()
    text = ["# Robust merging under attack (bench/robust.py)\n", f"Machine: {machine_line()}\n"]
    if args.from_:
        grids = [json.loads(Path(f).read_text()) for f in args.from_.split(",")]
        merged = merge_grids(grids)
        keys = [k.split("/") for k in merged]
        splits = [x for x in SPLITS if any(k[0] == x for k in keys)]
        opts = [x for x in OPTIMIZERS if any(k[1] == x for k in keys)]
        seeds = sorted({int(k[2]) for k in keys})
        text.append(f"From {args.from_}. {NUM_CLIENTS} clients, hostile partitions "
                    f"{sorted(HOSTILE)}. Cells: final central accuracy minus the honest-7 "
                    "baseline, in points, mean over seeds (worst seed in brackets).\n")
        for split in splits:
            for opt in opts:
                have = [s for s in seeds if f"{split}/{opt}/{s}" in merged]
                text.append(grid_tables(merged, [split], [opt], pick["attacks"],
                                        pick["defences"], have))
        text.append(recommend([merged], pick["attacks"], pick["defences"]))
    elif not args.no_grid:
        grid = run_grid(pick["splits"], pick["optimizers"], pick["attacks"], pick["defences"],
                        seeds, args.rounds)
        (out / f"{args.name}.json").write_text(json.dumps(grid, indent=1))
        text.append(
            f"{NUM_CLIENTS} clients, hostile partitions {sorted(HOSTILE)}, {args.rounds} "
            "rounds. Cells: final central accuracy minus the honest-7 baseline, in points, "
            "mean over seeds (worst seed in brackets); `stalled n`: rounds in which theta "
            "did not move although an honest reply was valid.\n")
        text.append(grid_tables(grid, pick["splits"], pick["optimizers"], pick["attacks"],
                                pick["defences"], seeds))
        text.append(recommend([grid], pick["attacks"], pick["defences"]))
    if args.merge_time != "none":
        torch.set_num_threads(torch.get_num_threads() if args.no_grid else 2)
        k, _, p = args.merge_time.partition("x")
        text.append(merge_times(int(k), parse_n(p), pick["defences"], args.merge_reps))
    text.append(f"\nTotal {time.perf_counter() - t0:.0f} s.")
    write_report(out, args.name, "\n".join(text))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
