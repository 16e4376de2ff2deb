"""Convergence on digits under a fair tuning protocol: this project's server optimizers
against Flower's FedAdam, FedAvgM, FedProx and FedAvg, through the same ClientApp, each
tuned with the same budget on tuning seeds and reported on other seeds.

Setting: 10 clients, all sampled every round, MLP 64-128-10, local SGD batch 32, 2
local epochs (the same local work for every contender, never tuned), central accuracy on
the held-out 20%. Splits: Dirichlet(0.1), Dirichlet(0.5), pathological 2 classes per
client; the same partitions, client seeds and initial model for every contender.

The protocol (bench/tuning.py): every contender tries the same number of
configurations (its server grid x the client's learning rate; FedAvg: client rates
only) on the tuning split's tuning seeds; the configuration with the fewest mean rounds
to 0.90 (ties: the higher mean accuracy of the last 5 rounds) is the one reported, on
the reported seeds, which the tuning never sees. Then, outside the comparison, our
`personal` mode (at client lr 0.05) and local-only training (each client alone for the
same number of epochs) on the reported seeds.

The federations run in this process (bench.federated's in-process engine; --engine ray
for Flower's simulation engine).

    python -m bench.convergence [--quick] [--tuning-seeds 100,101,102]
        [--seeds 0,1,2,3,4] [--rounds 20] [--clients 10] [--splits dirichlet-0.1,...]
        [--selection PREVIOUS/convergence.json] [--lam 0.1]
"""

from __future__ import annotations

import dataclasses
import json
import statistics
import time
from collections.abc import Sequence
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
from bench.federated import Contender, Curve, run_contenders
from bench.tuning import (
    CLIENT_LRS,
    FAMILIES,
    OURS,
    Config,
    Family,
    ProtocolError,
    Score,
    budget_configs,
    check_seeds,
    select,
)
from client.metrics import PERSONAL_ACC

SPLITS: dict[str, dict[str, Any]] = {
    "dirichlet-0.1": {"partition": "dirichlet", "dirichlet-alpha": 0.1},
    "dirichlet-0.5": {"partition": "dirichlet", "dirichlet-alpha": 0.5},
    "2-classes": {"partition": "pathological", "classes-per-client": 2},
}
SPLIT_TITLES = {"dirichlet-0.1": "Dirichlet 0.1", "dirichlet-0.5": "Dirichlet 0.5",
                "2-classes": "2 classes per client"}
QUICK_HPARAMS = {"momentum": (1.0, 0.9), "adam": (0.03, 0.9), "yogi": (0.03, 0.9)}
HParams = dict[str, tuple[float, float]]  # optimizer -> (server-lr, beta1)
TARGET = 0.90
MAX_ROUNDS_OURS = 6  # the target: ours reaches TARGET within this many rounds ...
MAX_LATE_DROP = 0.005  # ... and ends within this of its best round, on every seed
TUNING_SEEDS = (100, 101, 102)
REPORT_SEEDS = (0, 1, 2, 3, 4)


def base_config(rounds: int, clients: int, seed: int, split: str,
                local_lr: float = 0.05) -> dict[str, Any]:
    return {
        "num-server-rounds": rounds, "num-clients": clients, "min-nodes": clients,
        "fraction-train": 1.0, "fraction-evaluate": 0.0, "task": "digits",
        "local-epochs": 2, "local-lr": local_lr, "batch-size": 32, "seed": seed,
        "device": "cpu", **SPLITS[split],
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
    # theta <- theta + lr lam mean(theta_i): lr = 1/lam steps to the mean personal model;
    # "separate": each round's commit carries the clients' evaluation of its own theta
    # (folded, the last round's would come after its commit)
    return Contender(f"ours personal (lam {lam:g})", {
        "mode": "personal", "lam": lam, "optimizer": "sgd", "server-lr": 1.0 / lam,
        "fraction-evaluate": eval_fraction, "federated-evaluation": "separate"})


def run_one(config: Config, family: Family, split: str, seed: int, rounds: int,
            clients: int, engine: str) -> Curve:
    """One configuration on one (split, seed)."""
    base = base_config(rounds, clients, seed, split, local_lr=config.local_lr)
    return run_contenders(base, [family.contender(config)], num_clients=clients,
                          engine=engine)[config.label]


def tune(families: Sequence[Family], configs: dict[str, list[Config]], split: str,
         seeds: Sequence[int], rounds: int, clients: int,
         engine: str) -> tuple[dict[str, Config], dict[str, dict[Config, Score]], dict]:
    """Every family's configurations on the tuning seeds, and the chosen ones."""
    runs: dict[tuple[str, int], Curve] = {}
    chosen, scores = {}, {}
    for fam in families:
        t0 = time.perf_counter()
        for cfg in configs[fam.name]:
            for seed in seeds:
                runs[(cfg.label, seed)] = run_one(cfg, fam, split, seed, rounds, clients,
                                                  engine)
        chosen[fam.name], scores[fam.name] = select(configs[fam.name], runs, seeds,
                                                    target=TARGET, rounds=rounds)
        s = scores[fam.name][chosen[fam.name]]
        print(f"  {fam.name:16s} chose {chosen[fam.name].label}: mean rounds "
              f"{s.mean_rounds:.2f}, tail {s.tail_acc:.3f} "
              f"({time.perf_counter() - t0:.0f} s)", flush=True)
    return chosen, scores, {f"{label} | seed {seed}": c.acc for (label, seed), c in runs.items()}


def tuning_rows(families: Sequence[Family], chosen: dict[str, Config],
                scores: dict[str, dict[Config, Score]], rounds: int) -> list[list[str]]:
    """Per family: the chosen configuration, its score, and the runner-up's."""
    rows = []
    for fam in families:
        ranked = sorted(scores[fam.name].items(), key=lambda kv: kv[1].key)

        def show(s: Score) -> str:
            never = " (never counts as " + str(rounds + 1) + ")" if s.mean_rounds > rounds else ""
            return f"{s.mean_rounds:.2f}{never}, {s.tail_acc:.3f}"

        rows.append([fam.name, len(scores[fam.name]), chosen[fam.name].label.split("[")[1][:-1],
                     show(ranked[0][1]),
                     ranked[1][0].label.split("[")[1][:-1] if len(ranked) > 1 else "",
                     show(ranked[1][1]) if len(ranked) > 1 else ""])
    return rows


def report_rows(per_seed: list[dict[str, Curve]]) -> list[list[str]]:
    """Per contender, over the reported seeds: rounds to the target per seed, mean best
    and final accuracy, the gap best - final (mean and largest)."""
    rows = []
    for label in per_seed[0]:
        cs = [s[label] for s in per_seed]
        if any(c.error for c in cs):
            rows.append([label, "error: " + next(c.error for c in cs if c.error),
                         "", "", "", ""])
            continue
        gaps = [max(c.acc) - c.acc[-1] for c in cs]
        rows.append([label, "/".join(str(c.rounds_to(TARGET) or "never") for c in cs),
                     f"{statistics.fmean(max(c.acc) for c in cs):.3f}",
                     f"{statistics.fmean(c.acc[-1] for c in cs):.3f}",
                     f"{statistics.fmean(gaps):.3f}", f"{max(gaps):.3f}"])
    return rows


def target_lines(per_seed: list[dict[str, Curve]], ours_label: str, flower_labels:
                 Sequence[str], best_flower: str, rounds: int) -> list[str]:
    """The targets for ours, on every reported seed."""
    def reached(c: Curve) -> int:  # never = rounds + 1
        r = c.rounds_to(TARGET)
        return rounds + 1 if r is None or c.error else r

    ours = [reached(s[ours_label]) for s in per_seed]
    gaps = [max(s[ours_label].acc) - s[ours_label].acc[-1] for s in per_seed]
    tuned = [reached(s[best_flower]) for s in per_seed]
    any_flower = [min(reached(s[f]) for f in flower_labels) for s in per_seed]

    def verdict(ok: bool) -> str:
        return "**met**" if ok else "**not met**"

    def runs(xs: Sequence[int]) -> str:
        return "/".join(str(x) if x <= rounds else "never" for x in xs)

    return [
        f"- {OURS} reaches {TARGET} within {MAX_ROUNDS_OURS} rounds on every reported "
        f"seed: {runs(ours)}: {verdict(max(ours) <= min(MAX_ROUNDS_OURS, rounds))}",
        f"- no late oscillation (final within {MAX_LATE_DROP} of the best round) on every "
        f"reported seed: gaps " + "/".join(f"{g:.3f}" for g in gaps) + ": "
        + verdict(max(gaps) <= MAX_LATE_DROP),
        f"- fewer rounds than the best-tuned Flower strategy ({best_flower.split(' [')[0]}, "
        f"the best tuning score of Flower's four): {runs(tuned)}: fewer on "
        f"{sum(o < t for o, t in zip(ours, tuned, strict=True))}, as many on "
        f"{sum(o == t for o, t in zip(ours, tuned, strict=True))}, more on "
        f"{sum(o > t for o, t in zip(ours, tuned, strict=True))} of {len(ours)} seeds: "
        + verdict(all(o < t for o, t in zip(ours, tuned, strict=True))),
        f"- (stricter) fewer rounds than the fastest Flower strategy on each seed: "
        f"{runs(any_flower)}: " + verdict(all(o < t for o, t in zip(ours, any_flower,
                                                                      strict=True))),
    ]


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


def load_selection(path: Path, families: Sequence[Family],
                   ) -> tuple[dict[str, Config], dict[str, Score], dict[str, Any]]:
    """An earlier run's convergence.json: the chosen configurations, their tuning
    scores and its protocol (tuning split and seeds)."""
    saved = json.loads(path.read_text())
    try:
        protocol, picked = saved["protocol"], saved["selection"]
        chosen = {f.name: Config(f.name, tuple((k, float(v)) for k, v in
                                               picked[f.name]["knobs"])) for f in families}
        chosen_scores = {f.name: Score(**picked[f.name]["score"]) for f in families}
    except KeyError as exc:
        raise ProtocolError(f"{path}: no {exc} in its selection (run the tuning once "
                            "without --selection)") from None
    return chosen, chosen_scores, protocol


def seeds_arg(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split(",") if x.strip())


def main(argv: list[str] | None = None) -> int:
    ap = base_parser(__doc__.split("\n")[0])
    ap.add_argument("--tuning-seeds", type=seeds_arg, default=None,
                    help=f"comma list (default {','.join(map(str, TUNING_SEEDS))})")
    ap.add_argument("--seeds", type=seeds_arg, default=None,
                    help=f"reported seeds (default {','.join(map(str, REPORT_SEEDS))})")
    ap.add_argument("--rounds", type=int, default=None)
    ap.add_argument("--clients", type=int, default=None)
    ap.add_argument("--tuning-split", default=None, choices=list(SPLITS),
                    help="default dirichlet-0.1")
    ap.add_argument("--splits", default=None, help=f"comma list of {','.join(SPLITS)}")
    ap.add_argument("--selection", type=Path, default=None,
                    help="an earlier run's convergence.json: its chosen configurations "
                         "(skips the tuning)")
    ap.add_argument("--lam", type=float, default=0.1, help="personal mode's lam")
    ap.add_argument("--engine", choices=["inprocess", "ray"], default="inprocess")
    args = ap.parse_args(argv)
    from bench.common import quiet

    quiet()
    torch.set_num_threads(1)  # a 64-128-10 MLP: more threads only contend
    t_start = time.perf_counter()
    machine = machine_line()
    q = args.quick
    rounds = args.rounds or (2 if q else 20)
    clients = args.clients or (3 if q else 10)
    tuning_split = args.tuning_split or ("dirichlet-0.5" if q else "dirichlet-0.1")
    splits = (args.splits or ("dirichlet-0.5" if q else ",".join(SPLITS))).split(",")
    tuning_seeds = args.tuning_seeds or ((100,) if q else TUNING_SEEDS)
    report_seeds = args.seeds or ((0,) if q else REPORT_SEEDS)
    families = [dataclasses.replace(f, server_grid=f.server_grid[:1]) for f in FAMILIES] \
        if q else list(FAMILIES)
    client_lrs = CLIENT_LRS[:2] if q else CLIENT_LRS
    budget = len(client_lrs) * max(len(f.server_grid) for f in families)
    configs = budget_configs(families, budget, client_lrs)
    out = results_dir(args.out)

    scores: dict[str, dict[Config, Score]] = {}
    tuning_curves: dict = {}
    if args.selection:
        chosen, chosen_scores, saved = load_selection(args.selection, families)
        tuning_split, tuning_seeds = saved["tuning_split"], tuple(saved["tuning_seeds"])
    else:
        check_seeds(tuning_seeds, report_seeds)
        print(f"tuning on {SPLIT_TITLES[tuning_split]}, seeds {tuning_seeds}: {budget} "
              f"configurations x {len(families)} contenders", flush=True)
        chosen, scores, tuning_curves = tune(families, configs, tuning_split, tuning_seeds,
                                             rounds, clients, args.engine)
        chosen_scores = {name: scores[name][c] for name, c in chosen.items()}
    check_seeds(tuning_seeds, report_seeds)
    t_tuned = time.perf_counter()

    lineup = [*(f.contender(chosen[f.name]) for f in families), personal(args.lam)]
    results: dict[str, dict[str, Any]] = {}
    curves_of: dict[str, list[dict[str, Curve]]] = {}
    for split in splits:
        per_seed, local = [], []
        for seed in report_seeds:
            print(f"== {split}, seed {seed}", flush=True)
            per_seed.append(run_contenders(base_config(rounds, clients, seed, split), lineup,
                                           num_clients=clients, on_done=progress,
                                           engine=args.engine))
            local.append(local_only(split, clients, seed, rounds))
        curves_of[split] = per_seed
        png = out / f"convergence-{split}.png"
        plot(f"digits, {clients} clients, {SPLIT_TITLES[split]} (seed {report_seeds[0]})",
             per_seed[0], png)
        results[split] = {"curves": [{k: c.as_dict() for k, c in s.items()} for s in per_seed],
                          "local": local, "png": png.name}
    protocol = {"tuning_split": tuning_split, "tuning_seeds": list(tuning_seeds),
                "report_seeds": list(report_seeds), "budget": budget, "rounds": rounds,
                "clients": clients}
    (out / "convergence.json").write_text(json.dumps({
        "protocol": protocol,
        "selection": {name: {"knobs": [list(k) for k in c.knobs],
                             "score": dataclasses.asdict(chosen_scores[name])}
                      for name, c in chosen.items()},
        "tuning_scores": {name: {c.label: dataclasses.asdict(s) for c, s in sc.items()}
                          for name, sc in scores.items()},
        "tuning_curves": tuning_curves, "lam": args.lam, "results": results}, indent=1))

    command = "python -m bench.convergence" + (" --quick" if q else "") + "".join(
        f" {flag} {value}" for flag, value in (
            ("--tuning-seeds", args.tuning_seeds and ",".join(map(str, tuning_seeds))),
            ("--seeds", args.seeds and ",".join(map(str, report_seeds))),
            ("--rounds", args.rounds), ("--clients", args.clients),
            ("--tuning-split", args.tuning_split), ("--splits", args.splits),
            ("--selection", args.selection), ("--engine", args.engine != "inprocess"
                                               and args.engine)) if value)
    text = [
        "# Convergence on digits under the fair tuning protocol\n",
        f"Machine: {machine}\n",
        f"Command: `{command}`; {clients} clients, all sampled, {rounds} rounds, MLP, "
        f"local SGD batch 32, 2 local epochs; tuning {t_tuned - t_start:.0f} s, total "
        f"{time.perf_counter() - t_start:.0f} s.\n",
        f"Protocol (bench/tuning.py): every contender tries {budget} configurations "
        f"(client lr {'/'.join(f'{x:g}' for x in client_lrs)} x its server grid; FedAvg "
        f"{budget} client rates over the same range) on {SPLIT_TITLES[tuning_split]}, "
        f"tuning seeds {', '.join(map(str, tuning_seeds))}; chosen: fewest mean rounds to "
        f"{TARGET} (never = {rounds + 1}), ties by the mean accuracy of the last 5 rounds. "
        f"Reported on seeds {', '.join(map(str, report_seeds))}, which the tuning never "
        "ran.\n",
    ]
    if scores:
        text.append("## Tuning\n\n" + markdown_table(
            ["contender", "configurations", "chosen", "its mean rounds, tail acc",
             "runner-up", "its mean rounds, tail acc"],
            tuning_rows(families, chosen, scores, rounds)) + "\n")
    else:
        text.append(f"Chosen configurations read from {args.selection} (tuned on "
                    f"{SPLIT_TITLES[tuning_split]}, seeds {tuning_seeds}).\n")
    heads = ["contender (chosen configuration)", f"rounds to {TARGET} (per seed)",
             "best acc", "final acc", "best - final (mean)", "best - final (largest)"]
    flower = [c.label for c in lineup if c.flower is not None]
    best_flower = chosen[min((f.name for f in families if f.name.startswith("Flower")),
                             key=lambda name: chosen_scores[name].key)].label
    pers_label = lineup[-1].label
    pers_rows = []
    for split in splits:
        per_seed = curves_of[split]
        text.append(f"## {SPLIT_TITLES[split]}\n\n"
                    + markdown_table(heads, report_rows(per_seed)) + "\n")
        text.append("Targets on this split:\n\n" + "\n".join(target_lines(
            per_seed, chosen[OURS].label, flower, best_flower, rounds)) + "\n")
        text.append(f"![{split}]({results[split]['png']})\n")
        pers_rows.append([SPLIT_TITLES[split],
                          *personal_rows(per_seed, results[split]["local"], pers_label)])
    text.append(
        "## Personal mode vs the shared model vs local-only\n\n"
        "Outside the tuned comparison (client lr 0.05). Accuracy on each client's own "
        "validation split (its own label mix), mean over clients, after the last round; "
        "local-only = each client trained alone for the same number of epochs. Central = "
        "the held-out 20% (all classes).\n\n"
        + markdown_table(["split", "personal theta+theta_i (own)", "shared theta (own)",
                          "local-only (own)", "shared theta (central)",
                          "local-only (central)",
                          "clients with personal >= own local-only (worst difference)"],
                         pers_rows) + "\n")
    write_report(out, "convergence", "\n".join(text))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
