"""Coordinator memory: peak RSS of one merge of K replies of P float32.

Each (merge, K) runs in a fresh subprocess. The replies come from a generator: each
is built (random numbers -> ArrayRecord -> reply Message) only when the merge pulls it,
and nothing else keeps it, so what grows with K is what the merge itself keeps.

  ours: Merge (mean)           the round's merge with WeightedMean + sgd: streaming, O(P)
  ours: core (decode + mean)    decode_reply + WeightedMean.combine over the generator
  ours: Merge (median)         CoordinateMedian: needs every offset, O(K x P) (documented)
  Flower FedAvg                 FedAvg().aggregate_train: makes a list of all replies

Reported: peak RSS (ru_maxrss) of the process, the part added by the merge (peak
minus the peak before the merge started, after one reply had been built and dropped
as a warm-up), and the growth from K = 2 in model sizes (target for ours: < 2).

    python -m bench.memory [--quick] [--p 2M] [--ks 2,5,10,20,50,100]
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator
from pathlib import Path

from bench.common import (
    base_parser,
    figure,
    fmt_n,
    machine_line,
    markdown_table,
    parse_n,
    peak_rss_bytes,
    results_dir,
    run_worker,
    save_figure,
    write_report,
)

KINDS = {
    "ours-mean": "ours: Merge (mean)",
    "ours-core": "ours: core (decode + mean)",
    "ours-median": "ours: Merge (median)",
    "flower-fedavg": "Flower FedAvg",
}
TARGET_MODEL_SIZES = 2.0



def worker(kind: str, k: int, p: int) -> dict:
    """One merge in this process; returns the RSS figures."""
    import torch

    from bench.common import model_layout, quiet, random_params, train_reply

    quiet()
    from flwr.serverapp.strategy import FedAvg

    from aggregation import CoordinateMedian, ServerState, WeightedMean, sgd
    from coordinator.grid import Reply
    from coordinator.merge import Merge
    from coordinator.replies import ReplyValidator, UpdateLimits, decode_reply

    layout = model_layout(p)

    def replies(n: int) -> Iterator:
        for i in range(n):
            params = random_params(layout, seed=i)
            msg = train_reply(params, examples=100 + i, node=i + 1)
            del params
            yield msg  # the generator drops its reference when the next one is pulled
            del msg

    params = {name: torch.zeros(shape) for name, shape in layout}
    opt = sgd(lr=1.0)
    if kind in ("ours-mean", "ours-median"):
        combiner = WeightedMean() if kind == "ours-mean" else CoordinateMedian()
        whole = Merge(ReplyValidator(), combiner, opt)
        state = ServerState(params, opt.init(params))

        def merge() -> None:
            whole(state, (Reply(str(m.metadata.src_node_id), m) for m in replies(k)))
    elif kind == "ours-core":
        combiner = WeightedMean()
        limits = UpdateLimits()

        def merge() -> None:
            combiner.combine((decode_reply(m, params, limits).update for m in replies(k)), params)
    elif kind == "flower-fedavg":
        fedavg = FedAvg()

        def merge() -> None:
            fedavg.aggregate_train(1, replies(k))
    else:
        raise ValueError(f"unknown kind {kind!r}")

    for _ in replies(1):  # warm-up: the cost of building one reply is not the merge's
        pass
    before = peak_rss_bytes()
    merge()
    peak = peak_rss_bytes()
    return {"kind": kind, "k": k, "p": p, "peak": peak, "before": before,
            "added": max(0, peak - before)}


def run_one(kind: str, k: int, p: int) -> dict:
    return run_worker("bench.memory", [kind, "--k", str(k), "--p", str(p)], f"{kind} K={k}")


def plot(rows: dict[str, list[dict]], model_bytes: int, path: Path) -> None:

    fig, ax = figure(size=(7, 4.2))
    for kind, rs in rows.items():
        ax.plot([r["k"] for r in rs], [r["peak"] / 2**20 for r in rs], marker="o",
                label=KINDS[kind])
    base = rows.get("ours-mean") or next(iter(rows.values()))
    ax.axhline(base[0]["peak"] / 2**20 + TARGET_MODEL_SIZES * model_bytes / 2**20,
               color="gray", ls="--", lw=1, label="ours at K=2 + 2 model sizes (target)")
    ax.set_xscale("log")
    ax.set_xlabel("K replies merged")
    ax.set_ylabel("peak RSS of the process (MiB)")
    ax.set_title(f"Coordinator memory, P = {fmt_n(base[0]['p'])} float32, replies built lazily")
    ax.legend(fontsize=8)
    save_figure(fig, path)


def main(argv: list[str] | None = None) -> int:
    ap = base_parser(__doc__.split("\n")[0])
    ap.add_argument("--p", type=parse_n, default=None)
    ap.add_argument("--ks", default=None)
    ap.add_argument("--kinds", default=",".join(KINDS))
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--k", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args.worker, args.k, args.p)))
        return 0
    p = args.p or (parse_n("200K") if args.quick else parse_n("2M"))
    ks = [int(x) for x in (args.ks or ("2,5" if args.quick else "2,5,10,20,50,100")).split(",")]
    kinds = args.kinds.split(",")
    out = results_dir(args.out)
    model_bytes = p * 4
    rows: dict[str, list[dict]] = {kind: [] for kind in kinds}
    for k in ks:
        for kind in kinds:
            r = run_one(kind, k, p)
            rows[kind].append(r)
            print(f"{KINDS[kind]:32s} K={k:4d}: peak {r['peak'] / 2**20:8.1f} MiB, "
                  f"added by the merge {r['added'] / 2**20:8.1f} MiB", flush=True)

    table_rows, verdicts = [], []
    for kind in kinds:
        rs = rows[kind]
        base = rs[0]["peak"]
        for r in rs:
            table_rows.append([
                KINDS[kind], r["k"], f"{r['peak'] / 2**20:.1f}", f"{r['added'] / 2**20:.1f}",
                f"{(r['peak'] - base) / model_bytes:+.2f}",
            ])
        growth = (rs[-1]["peak"] - base) / model_bytes
        verdicts.append(
            f"- {KINDS[kind]}: growth from K={rs[0]['k']} to K={rs[-1]['k']} = "
            f"{growth:.2f} model sizes"
            + (f" ({'met' if growth < TARGET_MODEL_SIZES else 'MISSED'}: target < "
               f"{TARGET_MODEL_SIZES:g})" if kind.startswith("ours-") and kind != "ours-median"
               else "")
        )
    png = out / "memory.png"
    plot(rows, model_bytes, png)
    text = "\n".join([
        "# Coordinator memory (peak RSS) vs K\n",
        f"Machine: {machine_line()}\n",
        f"Command: `python -m bench.memory{' --quick' if args.quick else ''}`; P = "
        f"{fmt_n(p)} float32 (one model = {model_bytes / 2**20:.1f} MiB), 32 tensors; "
        "each (merge, K) in a fresh process; replies built lazily by a generator.\n",
        markdown_table(["merge", "K", "peak RSS MiB", "added by the merge MiB",
                        "peak - peak at smallest K (model sizes)"], table_rows),
        "",
        *verdicts,
        "",
        f"![memory]({png.name})",
    ])
    write_report(out, "memory", text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
