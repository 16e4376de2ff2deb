"""Convergence on digits: this project's server optimizers and personal mode against
Flower's FedAvg, FedAvgM, FedAdam and FedProx, through the same ClientApp.

Setting (the one Flower's reference figures below were measured in): 10 clients, all
sampled every round, MLP 64-128-10, local SGD lr 0.05, batch 32, 2 local epochs, 30
rounds, central accuracy on the held-out 20%.
Splits: Dirichlet(0.1), Dirichlet(0.5), pathological 2 classes per client; the same
partitions, client seeds and initial model for every contender.

Ours: sgd lr 1 (= FedAvg), momentum 0.9, adam, yogi (server-lr, and beta1 for adam and
yogi, tuned once on Dirichlet 0.5 seed 0 and kept for every split; --hparams skips the
tuning), and
`personal` mode (run last in each simulation: its offsets stay in context.state).
Local-only: each client trains alone from the same initial model for the same budget
(rounds x local epochs) on its own data.

One simulation per (split, seed) runs every contender in turn (bench/federated.py).

    python -m bench.convergence [--quick] [--seeds 1] [--rounds 30] [--clients 10]
        [--hparams momentum=1.5,adam=0.1/0.8,yogi=0.1/0.8] [--lam 0.1]
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from bench.common import (
    base_parser,
    figure,
    machine_line,
    markdown_table,
    results_dir,
    save_figure,
    write_report,
)
from bench.federated import Contender, Curve, flower_strategies, run_contenders
from client.metrics import PERSONAL_ACC

SPLITS: dict[str, dict[str, Any]] = {
    "dirichlet-0.1": {"partition": "dirichlet", "dirichlet-alpha": 0.1},
    "dirichlet-0.5": {"partition": "dirichlet", "dirichlet-alpha": 0.5},
    "2-classes": {"partition": "pathological", "classes-per-client": 2},
}
SPLIT_TITLES = {"dirichlet-0.1": "Dirichlet 0.1", "dirichlet-0.5": "Dirichlet 0.5",
                "2-classes": "2 classes per client"}
# (server-lr, beta1) tried per optimizer; momentum has no beta1 (its beta stays 0.9, as
# Flower's FedAvgM). Reddi et al. tune the server step with its moments; beta1 0.8 came
# out of a side sweep against Flower's FedAdam (bench/README.md).
ADAPTIVE_GRID = [(lr, b1) for lr in (0.03, 0.1, 0.3) for b1 in (0.9, 0.8)]
TUNING_GRID = {"momentum": [(lr, 0.9) for lr in (0.5, 1.0, 1.5)], "adam": ADAPTIVE_GRID,
               "yogi": ADAPTIVE_GRID}
QUICK_HPARAMS = {"momentum": (1.0, 0.9), "adam": (0.03, 0.9), "yogi": (0.03, 0.9)}
HParams = dict[str, tuple[float, float]]  # optimizer -> (server-lr, beta1)
TARGET = 0.90
# Flower's strategies measured in this setting before fedmerge existed, 3 seeds: rounds
# to 0.90 (seed 0/1/2), final accuracy (3-seed mean)
FLOWER_ANCHORS = {
    "dirichlet-0.1": ["never, 0.83", "13/15/15, 0.95", "9/8/9, 0.95 (oscillates)",
                      "never, 0.83"],
    "dirichlet-0.5": ["27/20/30, 0.90", "10/10/14, 0.96", "7/7/8, 0.96", "27/20/30, 0.90"],
    "2-classes": ["never, 0.88", "22/17/23, 0.93", "13/11/14, 0.96", "never, 0.88"],
}


def base_config(rounds: int, clients: int, seed: int, split: str) -> dict[str, Any]:
    return {
        "num-server-rounds": rounds, "num-clients": clients, "min-nodes": clients,
        "fraction-train": 1.0, "fraction-evaluate": 0.0, "task": "digits",
        "local-epochs": 2, "local-lr": 0.05, "batch-size": 32, "seed": seed, "device": "cpu",
        **SPLITS[split],
    }


def server_optimizer(opt: str, lr: float, beta1: float, prefix: str = "ours ") -> Contender:
    if opt == "momentum":
        return Contender(f"{prefix}momentum 0.9 lr {lr:g}",
                         {"optimizer": "momentum", "momentum": 0.9, "server-lr": lr})
    return Contender(f"{prefix}{opt} lr {lr:g} b1 {beta1:g}",
                     {"optimizer": opt, "server-lr": lr, "beta1": beta1})


def ours(hp: HParams) -> list[Contender]:
    return [
        Contender("ours sgd lr 1 (FedAvg)", {"optimizer": "sgd", "server-lr": 1.0}),
        *(server_optimizer(opt, *hp[opt]) for opt in ("momentum", "adam", "yogi")),
    ]


def parse_hparams(text: str, base: HParams = QUICK_HPARAMS) -> HParams:
    """``momentum=1.5,adam=0.1/0.8``: server-lr, then beta1 (0.9 if left out); optimizers
    not named keep ``base``'s."""
    hp = dict(base)
    for item in text.split(","):
        opt, _, value = item.partition("=")
        lr, _, b1 = value.partition("/")
        hp[opt.strip()] = (float(lr), float(b1 or 0.9))
    return hp


def personal(lam: float, eval_fraction: float = 1.0) -> Contender:
    # theta <- theta + lr lam mean(theta_i): lr = 1/lam steps to the mean personal model
    return Contender(f"ours personal (lam {lam:g})", {
        "mode": "personal", "lam": lam, "optimizer": "sgd", "server-lr": 1.0 / lam,
        "fraction-evaluate": eval_fraction})


def score(curve: Curve, rounds: int) -> tuple[int, float]:
    """Tuning order: fewer rounds to 0.90, then the higher mean of the last 5 rounds."""
    r = curve.rounds_to(TARGET)
    tail = curve.acc[-5:] if curve.acc else [0.0]
    return (r if r is not None else rounds + 1, -statistics.fmean(tail))


def tune(rounds: int, clients: int) -> tuple[HParams, list[list[str]]]:
    contenders = {(opt, *point): server_optimizer(opt, *point, prefix="")
                  for opt, grid in TUNING_GRID.items() for point in grid}
    print(f"tuning on Dirichlet 0.5 seed 0: {len(contenders)} runs", flush=True)
    curves = run_contenders(base_config(rounds, clients, 0, "dirichlet-0.5"),
                            list(contenders.values()), num_clients=clients, on_done=progress)
    best: HParams = {}
    rows = []
    for opt, grid in TUNING_GRID.items():
        cands = [(score(curves[contenders[(opt, *point)].label], rounds), point)
                 for point in grid]
        best[opt] = min(cands)[1]
        for (r, neg_tail), (lr, b1) in cands:
            rows.append([opt, f"{lr:g}", "" if opt == "momentum" else f"{b1:g}",
                         r if r <= rounds else "never", f"{-neg_tail:.3f}",
                         "chosen" if (lr, b1) == best[opt] else ""])
    return best, rows


def local_only(split: str, clients: int, seed: int, rounds: int) -> dict[str, float]:
    """Each client alone: rounds x 2 epochs of local SGD from the initial model."""
    from client.data import PartitionSpec, load_partition
    from client.datasets import central_test_set
    from client.models import build_model
    from client.trainer import evaluate, load_params, train_offset

    cfg = base_config(rounds, clients, seed, split)
    spec = PartitionSpec(cfg["partition"], clients, seed=seed,
                         alpha=cfg.get("dirichlet-alpha", 0.5),
                         classes_per_client=cfg.get("classes-per-client", 2))
    x_test, y_test = central_test_set("digits")
    cpu = torch.device("cpu")
    own, central = {}, {}
    theta = {k: v.clone() for k, v in build_model("mlp", seed=seed).state_dict().items()}
    for pid in range(clients):
        data = load_partition(spec, pid)
        model = build_model("mlp", seed=seed)
        res = train_offset(model, theta, data.x_train, data.y_train,
                           epochs=rounds * cfg["local-epochs"], lr=cfg["local-lr"],
                           batch_size=cfg["batch-size"], proximal=0.0, device=cpu,
                           seed=seed * 1000 + pid)
        model = load_params(build_model("mlp"), theta, res.offset)
        own[str(pid)] = evaluate(model, data.x_val, data.y_val, cpu)[1]
        central[str(pid)] = evaluate(model, x_test, y_test, cpu)[1]
    return {"own": statistics.fmean(own.values()), "central": statistics.fmean(central.values()),
            "per_client_own": own, "per_client_central": central}


def progress(curve: Curve, target: float | None = TARGET) -> None:
    """One line per finished contender."""
    if curve.error:
        print(f"  {curve.label:34s} FAILED: {curve.error}", flush=True)
        return
    reached = ""
    if target is not None:
        r = curve.rounds_to(target)
        reached = f"rounds to {target}: {r if r else 'never'}  "
    print(f"  {curve.label:34s} final {curve.acc[-1]:.3f}  best {max(curve.acc):.3f}  "
          f"{reached}({curve.seconds:.1f} s)", flush=True)


def plot(title: str, curves: dict[str, Curve], path: Path, *, target: float | None = TARGET,
         ylabel: str = "central accuracy (held-out 20%)") -> None:
    from matplotlib.ticker import MaxNLocator

    fig, ax = figure(size=(7.5, 4.5))
    for label, c in curves.items():
        if c.acc:
            style = "--" if label.startswith("Flower") else "-"
            ax.plot(range(len(c.acc)), c.acc, style, label=label, lw=1.4)
    if target is not None:
        ax.axhline(target, color="gray", lw=0.8, ls=":")
        ax.set_ylim(0.0, 1.0)
    else:
        ax.set_ylim(0.0, None)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("round")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=7, loc="lower right")
    save_figure(fig, path)


def summary_rows(per_seed: list[dict[str, Curve]], target: float = TARGET,
                 tail_rounds: int = 10) -> list[list[str]]:
    rows = []
    for label in per_seed[0]:
        cs = [s[label] for s in per_seed]
        if any(c.error for c in cs):
            rows.append([label, "error: " + next(c.error for c in cs if c.error), "", "", "", ""])
            continue
        reach = "/".join(str(c.rounds_to(target) or "never") for c in cs)
        final = statistics.fmean(c.acc[-1] for c in cs)
        best = statistics.fmean(max(c.acc) for c in cs)
        tail = [min(c.acc[1:][-tail_rounds:]) for c in cs]
        drop = statistics.fmean(max(c.acc) - c.acc[-1] for c in cs)
        rows.append([label, reach, f"{final:.3f}", f"{best:.3f}",
                     f"{statistics.fmean(tail):.3f}", f"{drop:.3f}",
                     f"{statistics.median(t for c in cs for t in c.round_s):.3f}"
                     if cs[0].round_s else ""])
    return rows


def personal_rows(per_seed: list[dict[str, Curve]], local: list[dict[str, Any]],
                  label: str) -> list[str]:
    """Clients evaluated in the last round that hold a personal offset, each against the
    same client trained alone (``local``: per-client accuracies by partition id)."""
    cs = [s[label] for s in per_seed]
    evald = [{pid: m for pid, m in c.clients.items() if PERSONAL_ACC in m} for c in cs]
    if any(c.error for c in cs) or not all(evald):
        return ["error" if any(c.error for c in cs) else "no personal evaluation",
                "", "", "", "", ""]

    def mean_over(key: str) -> float:
        return statistics.fmean(m[key] for e in evald for m in e.values())

    def local_mean(key: str) -> float:
        return statistics.fmean(loc[key][pid] for e, loc in zip(evald, local, strict=True)
                                for pid in e)

    diffs = [m[PERSONAL_ACC] - loc["per_client_own"][pid]
             for e, loc in zip(evald, local, strict=True) for pid, m in e.items()]
    at_least = sum(d >= 0 for d in diffs)
    return [
        f"{mean_over('personal-acc'):.3f}", f"{mean_over('eval-acc'):.3f}",
        f"{local_mean('per_client_own'):.3f}",
        f"{statistics.fmean(c.acc[-1] for c in cs):.3f}",
        f"{local_mean('per_client_central'):.3f}",
        f"{at_least}/{len(diffs)} (worst {min(diffs):+.3f})",
    ]


def overhead_note(all_curves: list[dict[str, Curve]]) -> str:
    """The coordinator's part of a round of ours: round time minus waiting for clients."""
    fr, merge = [], []
    for curves in all_curves:
        for label, c in curves.items():
            if label.startswith("ours") and "personal" not in label and c.round_s:
                fr += [(r - w) / r for r, w in zip(c.round_s, c.wait_s, strict=True) if r > 0]
                merge += c.merge_s
    if not fr:
        return ""
    return (f"Round time of ours (global mode): the part not spent waiting for client "
            f"replies (sending, merge, central evaluation, checkpoint, database commit) is "
            f"a median {100 * statistics.median(fr):.0f}% of the round (min "
            f"{100 * min(fr):.0f}%, max {100 * max(fr):.0f}%); the merge itself a median "
            f"{1e3 * statistics.median(merge):.2f} ms. (Waiting includes Ray's dispatch of "
            f"the messages to the actors, not only training.)")


def main(argv: list[str] | None = None) -> int:
    ap = base_parser(__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=None)
    ap.add_argument("--clients", type=int, default=None)
    ap.add_argument("--splits", default=None, help=f"comma list of {','.join(SPLITS)}")
    ap.add_argument("--hparams", default=None,
                    help="momentum=LR,adam=LR[/BETA1],yogi=LR[/BETA1] (skips the tuning)")
    ap.add_argument("--lam", type=float, default=0.1, help="personal mode's lam")
    args = ap.parse_args(argv)
    from bench.common import quiet

    quiet()
    t_start = time.perf_counter()
    rounds = args.rounds or (2 if args.quick else 30)
    clients = args.clients or (3 if args.quick else 10)
    splits = (args.splits or ("dirichlet-0.5" if args.quick else ",".join(SPLITS))).split(",")
    out = results_dir(args.out)
    machine = machine_line()

    tuning_rows: list[list[str]] = []
    if args.hparams:
        hp = parse_hparams(args.hparams)
    elif args.quick:
        hp = dict(QUICK_HPARAMS)
    else:
        hp, tuning_rows = tune(rounds, clients)
    print(f"server (lr, beta1): {hp}", flush=True)

    contenders = [*ours(hp), *flower_strategies(), personal(args.lam)]
    results: dict[str, dict[str, Any]] = {}
    curves_of: dict[str, list[dict[str, Curve]]] = {}  # split -> per seed
    for split in splits:
        per_seed, local = [], []
        for seed in range(args.seeds):
            print(f"== {split}, seed {seed}", flush=True)
            curves = run_contenders(base_config(rounds, clients, seed, split), contenders,
                                    num_clients=clients, on_done=progress)
            per_seed.append(curves)
            local.append(local_only(split, clients, seed, rounds))
            print(f"  local-only: own {local[-1]['own']:.3f}, central "
                  f"{local[-1]['central']:.3f}", flush=True)
        curves_of[split] = per_seed
        png = out / f"convergence-{split}.png"
        plot(f"digits, {clients} clients, {SPLIT_TITLES[split]} (seed 0)", per_seed[0], png)
        results[split] = {"curves": [{k: c.as_dict() for k, c in s.items()} for s in per_seed],
                          "local": local, "png": png.name}
    (out / "convergence.json").write_text(json.dumps(
        {"server_hparams": hp, "lam": args.lam, "results": results}, indent=1))

    text = [
        "# Convergence on digits: ours vs Flower's strategies\n",
        f"Machine: {machine}\n",
        f"Command: `python -m bench.convergence{' --quick' if args.quick else ''}"
        f"{f' --seeds {args.seeds}' if args.seeds != 1 else ''}"
        f"{f' --hparams {args.hparams}' if args.hparams else ''}`; {clients} clients, "
        "all "
        f"sampled, {rounds} rounds, MLP, local SGD lr 0.05 batch 32, 2 local epochs; "
        f"{args.seeds} seed(s); total {time.perf_counter() - t_start:.0f} s.\n",
        ("Server optimizers (given with --hparams, not tuned in this run): "
         if args.hparams else
         "Server optimizers (tuned once on Dirichlet 0.5 seed 0, kept for all splits): ")
        + ", ".join(f"{k} lr {lr:g}" + ("" if k == "momentum" else f" beta1 {b1:g}")
                    for k, (lr, b1) in hp.items())
        + f"; personal mode lam {args.lam:g}, sgd server-lr {1 / args.lam:g}.\n",
    ]
    if tuning_rows:
        text.append("Tuning (Dirichlet 0.5, seed 0):\n\n" + markdown_table(
            ["optimizer", "server-lr", "beta1", f"rounds to {TARGET}", "mean acc last 5", ""],
            tuning_rows) + "\n")
    heads = ["contender", f"rounds to {TARGET} (per seed)", "final acc", "best acc",
             "min acc last 10 rounds", "best - final", "median round s"]
    pers_label = personal(args.lam).label
    pers_rows = []
    for split in splits:
        per_seed = curves_of[split]
        text.append(f"## {SPLIT_TITLES[split]}\n\n"
                    + markdown_table(heads, summary_rows(per_seed)) + "\n")
        text.append(f"![{split}]({results[split]['png']})\n")
        pers_rows.append([SPLIT_TITLES[split],
                          *personal_rows(per_seed, results[split]["local"], pers_label)])
    text.append(
        "## Personal mode vs the shared model vs local-only\n\n"
        "Accuracy on each client's own validation split (its own label mix), mean over "
        "clients, after the last round; local-only = each client trained alone for the same "
        "number of epochs. Central = the held-out 20% (all classes).\n\n"
        + markdown_table(["split", "personal theta+theta_i (own)", "shared theta (own)",
                          "local-only (own)", "shared theta (central)",
                          "local-only (central)",
                          "clients with personal >= own local-only (worst difference)"],
                         pers_rows) + "\n")
    text.append(overhead_note([c for per_seed in curves_of.values() for c in per_seed]) + "\n")
    text.append("## Flower's reference figures (3 seeds), for orientation\n\n"
                + markdown_table(["split", "FedAvg", "FedAvgM (0.9)", "FedAdam eta 0.1",
                                  "FedProx mu 0.1"],
                                 [[SPLIT_TITLES[s], *FLOWER_ANCHORS[s]] for s in SPLITS]) + "\n")
    write_report(out, "convergence", "\n".join(text))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
