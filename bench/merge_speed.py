"""Merge speed: this project's merge against Flower 1.42 and the memory limit.

For each configuration K x P (K replies of P float32, over 32 tensors), K real Flower
reply Messages are built once and every variant runs on those very replies,
round-robin (each repetition runs every variant once; ratios are per repetition):

  memcpy (yardstick)        torch copy_ of 64M float32, GB/s = bytes copied / t
  limit: blocked axpy       the fastest plain merge known: on the replies' own zero-copy
                            views (read from the Flower Messages), per block of the sum
                            (1M elements) w_1 x_1 + ... + w_K x_K, so the block stays in
                            cache while the K replies are added; no validation; torch's
                            threads as set for the run
  old limit: fused axpy     out.add_(x_k, alpha=w_k) over K pre-built flat tensors (the
                            limit before; kept for continuity)
  ours: Merge               coordinator.merge.Merge with sgd lr 1 (= FedAvg): header
                            checks, then the single-pass checked sum (finite, norm, exact
                            refusals: aggregation/streaming.py), optimizer step
  ours: Merge, packed       the same Merge on the same numbers sent as our ClientApp
                            sends them to fedmerge's coordinator: one packed Array per
                            reply (client/packed.py), not one .npy Array per tensor
  ours: core merge          decode_reply (zero-copy views, validation) + WeightedMean
                            (the two-pass path: norm first, then the add)
  ours: parts               decode + validate only; WeightedMean on pre-decoded views;
                            sgd step; building the output (packed) ArrayRecord
  ours: Merge, DP mean        the same with dp central (aggregation/dp.py): each offset
                              clipped, weight 1, Gaussian noise drawn in place, fixed m
  Flower FedAvg             FedAvg().aggregate_train on the same replies (to Flower they
                            are models, to us offsets: same numbers, same arithmetic)
  Flower FedAdam            FedAdam().aggregate_train on the same replies

GB/s = K x P x 4 / t. Started from theta = 0, our output equals Flower's FedAvg output
(checked). Then the server optimizer step alone at P (default 10M): ours adam and yogi
against Flower's FedAdam step (FedAvg's part stubbed out) and torch.optim.Adam(fused=True)
as the limit; float32 must stay float32.

`--load N` starts N busy-loop processes for the run's duration (a busy machine, made
reproducible); `--threads N` sets torch's threads, `--merge-threads N` our merge's
workers (the run-config key merge-threads; default: as `coordinator.config` chooses).

    python -m bench.merge_speed [--quick] [--configs 10x10M,100x1M,8x50M,100x100K]
        [--reps 7] [--opt-p 10M] [--threads N] [--merge-threads N] [--load N] [--profile]
"""

from __future__ import annotations

import cProfile
import gc
import io
import pstats
import statistics
from pathlib import Path

import numpy as np
import torch

from bench.common import (
    FakeGrid,
    Variant,
    base_parser,
    busy_load,
    figure,
    fmt_n,
    machine_line,
    markdown_table,
    med_min_max,
    model_layout,
    parse_n,
    quiet,
    random_params,
    ratios,
    results_dir,
    round_robin,
    save_figure,
    stamp,
    train_reply,
    write_report,
)

MEMCPY_ELEMS = 64 * 1024 * 1024
MEMCPY = "memcpy (yardstick; GB/s counts read + write)"
OURS = "ours: Merge (single-pass checked mean, sgd lr 1)"
OURS_PACKED = "ours: Merge, packed replies (as our ClientApp sends them)"
LIMIT = "limit: blocked axpy (1M-element blocks, replies' views)"
OLD_LIMIT = "old limit: fused axpy loop (flat copies)"
CORE = "ours: core merge, two-pass (decode + WeightedMean)"
FEDAVG = "Flower FedAvg.aggregate_train"
TARGET_VS_FLOWER = 4.0  # at 10 x 10M and 100 x 1M
TARGET_VS_FLOWER_LOADED = 2.0  # under the bench's own load, every size
DP_VARIANT = "ours: Merge, DP mean (dp central)"
TARGET_VS_LIMIT = 0.75
TARGET_VS_LIMIT_SMALL = 0.5  # models under 1M parameters (per-reply costs dominate)
LIMIT_BLOCK = 1 << 20


def target_vs_limit(p: int) -> float:
    return TARGET_VS_LIMIT if p >= 1_000_000 else TARGET_VS_LIMIT_SMALL


def target_vs_flower(k: int, p: int, loaded: bool) -> float | None:
    if loaded:
        return TARGET_VS_FLOWER_LOADED
    return TARGET_VS_FLOWER if (k, p) in ((10, 10_000_000), (100, 1_000_000)) else None


def build_replies(k: int, p: int, seed: int = 0) -> tuple[list, list[int], list]:
    """K reply Messages (one model's worth of random numbers each) and their examples."""
    layout = model_layout(p)
    rng = np.random.default_rng(seed)
    examples = [int(n) for n in rng.integers(100, 1000, size=k)]
    replies = []
    for i in range(k):
        params = random_params(layout, seed=seed * 100_003 + i)
        replies.append(train_reply(params, examples=examples[i], node=i + 1))
        del params  # the Message holds its own .npy bytes
    return replies, examples, layout


def blocked_axpy(views: list[dict[str, torch.Tensor]], weights: list[float],
                 out: dict[str, torch.Tensor], block: int = LIMIT_BLOCK) -> None:
    """out = sum_k w_k x_k, block by block of out: each block stays in cache while the
    K replies are added to it. No check of any kind: the plain merge's limit."""
    for name, o in out.items():
        flat = o.view(-1)
        xs = [v[name].reshape(-1) for v in views]
        for s in range(0, flat.numel(), block):
            ob = flat[s:s + block]
            torch.mul(xs[0][s:s + block], weights[0], out=ob)
            for x, w in zip(xs[1:], weights[1:], strict=True):
                ob.add_(x[s:s + block], alpha=w)


def merge_config(k: int, p: int, reps: int, profile: bool, memcpy_elems: int,
                 merge_threads: int) -> dict:
    from flwr.app import ArrayRecord, ConfigRecord
    from flwr.serverapp.strategy import FedAdam, FedAvg

    from aggregation import ServerState, WeightedMean, sgd
    from aggregation.dp import GaussianSumMean
    from coordinator.grid import Reply
    from coordinator.merge import Merge
    from coordinator.payloads import packed_record
    from coordinator.replies import ReplyValidator, UpdateLimits, decode_reply

    replies, examples, layout = build_replies(k, p)
    total = float(sum(examples))
    weights = [n / total for n in examples]

    def zeros() -> dict[str, torch.Tensor]:
        return {name: torch.zeros(shape) for name, shape in layout}

    # --- ours: the whole merge (validate, combine, step), sgd lr 1 = FedAvg, from theta = 0
    opt = sgd(lr=1.0)
    merge = Merge(ReplyValidator(), WeightedMean(), opt, threads=merge_threads)
    params = zeros()
    state = ServerState(params, opt.init(params))

    def ours() -> object:  # theta moves each call; the time does not depend on it
        return merge(state, (Reply(str(m.metadata.src_node_id), m) for m in replies))

    ours()
    flower_out, _ = FedAvg().aggregate_train(1, replies)
    worst = max(
        float(np.abs(params[n].numpy() - flower_out[n].numpy()).max()) for n, _ in layout
    )
    assert worst < 1e-6, f"ours != Flower FedAvg on the same replies: max diff {worst}"
    assert all(params[n].dtype == torch.float32 for n, _ in layout)
    del flower_out
    # --- ours on the same numbers, packed as our ClientApp sends them to our coordinator
    packed_replies = [
        train_reply(decode_reply(m, zeros(), UpdateLimits()).update.offset,
                    examples=examples[i], node=i + 1, packed=True)
        for i, m in enumerate(replies)]
    packed_merge = Merge(ReplyValidator(), WeightedMean(), opt, threads=merge_threads)
    packed_params = zeros()
    packed_state = ServerState(packed_params, opt.init(packed_params))

    def ours_packed() -> object:
        return packed_merge(packed_state,
                            (Reply(str(m.metadata.src_node_id), m) for m in packed_replies))

    ours_packed()
    assert all(torch.equal(packed_params[n], params[n]) for n, _ in layout), \
        "ours on packed replies != ours on per-tensor replies"
    dp_merge = Merge(ReplyValidator(), GaussianSumMean(clip=1.0, noise_multiplier=1.0,
                                                       denominator=k, seed=0), opt)
    dp_params = zeros()
    dp_state = ServerState(dp_params, opt.init(dp_params))

    def ours_dp() -> object:
        return dp_merge(dp_state, (Reply(str(m.metadata.src_node_id), m) for m in replies))

    # --- ours, in parts (as the merge calls them: decode and validate, norm included,
    # then the combiner, which reuses the norm)
    template = zeros()
    limits = UpdateLimits()
    core_combiner = WeightedMean()

    def core() -> object:
        return core_combiner.combine(
            (decode_reply(m, template, limits).update for m in replies), template
        )

    def decode_only() -> object:
        return [decode_reply(m, template, limits) for m in replies]

    decoded = [decode_reply(m, template, limits).update for m in replies]
    combine_only_c = WeightedMean()

    def combine_only() -> object:
        return combine_only_c.combine(decoded, template)

    step_params = zeros()
    step_grads = zeros()
    step_state = opt.init(step_params)

    def sgd_step() -> object:
        return opt.step(step_params, step_grads, step_state)

    def output_record() -> object:
        return packed_record(step_params)  # theta as the rounds send it

    # --- Flower
    fedavg = FedAvg()
    fedadam = FedAdam(eta=0.1, beta_1=0.9, beta_2=0.99, tau=1e-3)
    fedadam.configure_train(1, ArrayRecord(zeros()), ConfigRecord({}), FakeGrid(k))

    # --- the limit: blocked axpy over the replies' own views
    sums = zeros()

    def limit() -> None:
        blocked_axpy([u.offset for u in decoded], weights, sums)

    # --- the old limit: fused axpy over pre-built flat tensors (one per client)
    flat = [torch.cat([t.reshape(-1) for t in u.offset.values()]) for u in decoded]
    out = torch.empty(p)

    def old_limit() -> torch.Tensor:
        torch.mul(flat[0], weights[0], out=out)
        for x, w in zip(flat[1:], weights[1:], strict=True):
            out.add_(x, alpha=w)
        return out

    src = torch.rand(memcpy_elems)
    dst = torch.empty_like(src)

    nbytes = k * p * 4
    variants = [
        Variant(MEMCPY, lambda: dst.copy_(src)),
        Variant(LIMIT, limit),
        Variant(OLD_LIMIT, old_limit),
        Variant(OURS, ours),
        Variant(OURS_PACKED, ours_packed),
        Variant(DP_VARIANT, ours_dp),
        Variant(CORE, core),
        Variant("ours part: decode + validate", decode_only),
        Variant("ours part: WeightedMean on decoded views", combine_only),
        Variant("ours part: sgd step", sgd_step),
        Variant("ours part: output ArrayRecord", output_record),
        Variant(FEDAVG, lambda: fedavg.aggregate_train(1, replies)),
        Variant("Flower FedAdam.aggregate_train", lambda: fedadam.aggregate_train(1, replies)),
    ]
    times = round_robin(variants, reps)

    prof_text = ""
    if profile:
        prof = cProfile.Profile()
        prof.enable()
        for _ in range(3):
            ours()
        prof.disable()
        buf = io.StringIO()
        pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(12)
        prof_text = buf.getvalue()

    return {"k": k, "p": p, "times": times, "nbytes": nbytes, "profile": prof_text,
            "memcpy_bytes": 2 * memcpy_elems * 4}


def merge_table(res: dict) -> tuple[str, dict[str, list[float]]]:
    times, nbytes, mbytes = res["times"], res["nbytes"], res["memcpy_bytes"]
    ours = times[OURS]
    lim = times[LIMIT]
    memcpy = times[MEMCPY]
    rows = []
    for name, ts in times.items():
        b = mbytes if name.startswith("memcpy") else nbytes
        gbs = [b / t / 1e9 for t in ts]
        part = name.startswith("ours part")
        rows.append([
            name,
            med_min_max(ts, 1e3),
            "" if part else med_min_max(gbs, 1, 1),
            f"{statistics.median(ratios(ts, ours)):.2f}",
            "" if part or name.startswith("memcpy") else
            f"{statistics.median(ratios(memcpy, [mbytes / nbytes * t for t in ts])):.2f}",
        ])
    headers = ["variant", "ms median (min-max)", "GB/s median (min-max)",
               "time / ours", "GB/s / memcpy GB/s"]
    key = {
        "vs Flower FedAvg": ratios(times[FEDAVG], ours),
        "vs Flower FedAdam": ratios(times["Flower FedAdam.aggregate_train"], ours),
        "vs limit": ratios(lim, ours),
        "packed vs limit": ratios(lim, times[OURS_PACKED]),
        "packed vs Flower FedAvg": ratios(times[FEDAVG], times[OURS_PACKED]),
        "vs old limit": ratios(times[OLD_LIMIT], ours),
        "core vs limit": ratios(lim, times[CORE]),
        "limit vs Flower FedAvg": ratios(times[FEDAVG], lim),
    }
    return markdown_table(headers, rows), key


def optimizer_bench(p: int, reps: int) -> tuple[str, dict[str, list[float]], dict[str, str]]:
    from flwr.app import ArrayRecord, ConfigRecord, MetricRecord
    from flwr.serverapp.strategy import FedAdam, FedAvg

    from aggregation import adam, yogi

    stamp(0)  # FedOpt.configure_train builds Messages: they need a task identity
    layout = model_layout(p)
    x0 = random_params(layout, seed=1, scale=1.0)
    agg = random_params(layout, seed=2, scale=1.0)  # this round's mean model
    g0 = {n: x0[n] - agg[n] for n in x0}  # pseudo-gradient theta - mean model
    eta, b1, b2, tau = 0.1, 0.9, 0.99, 1e-3

    def ours(make):
        opt = make(lr=eta, beta1=b1, beta2=b2, tau=tau)
        params = {n: t.clone() for n, t in x0.items()}
        grads = {n: t.clone() for n, t in g0.items()}
        box = {"state": opt.init(params)}

        def restore() -> None:  # the step overwrites its scratch gradient
            torch._foreach_copy_(list(grads.values()), list(g0.values()))

        def step() -> None:
            box["state"] = opt.step(params, grads, box["state"])

        return step, restore, params

    adam_step, adam_restore, adam_params = ours(adam)
    yogi_step, yogi_restore, yogi_params = ours(yogi)

    ps = [torch.nn.Parameter(x0[n].clone()) for n in x0]
    for prm, n in zip(ps, x0, strict=True):
        prm.grad = g0[n].clone()
    fused = torch.optim.Adam(ps, lr=eta, betas=(b1, b2), eps=tau, fused=True)

    cur = ArrayRecord({n: t.clone() for n, t in x0.items()})
    agg_rec = ArrayRecord(agg)
    fedadam = FedAdam(eta=eta, beta_1=b1, beta_2=b2, tau=tau)
    fedadam.configure_train(1, cur, ConfigRecord({}), FakeGrid(2))
    original = FedAvg.aggregate_train
    out: dict[str, object] = {}

    def flower_step() -> None:
        # FedAdam's own step: FedAvg's part returns this round's mean model
        FedAvg.aggregate_train = lambda self, r, rep: (agg_rec, MetricRecord({}))
        try:
            out["rec"] = fedadam.aggregate_train(1, [])[0]
        finally:
            FedAvg.aggregate_train = original

    variants = [
        Variant("limit: torch.optim.Adam(fused=True)", fused.step),
        Variant("ours: adam step", adam_step, setup=adam_restore),
        Variant("ours: yogi step", yogi_step, setup=yogi_restore),
        Variant("Flower FedAdam step (aggregate stubbed)", flower_step),
    ]
    times = round_robin(variants, reps)
    dtypes = {
        "ours adam": str(next(iter(adam_params.values())).dtype),
        "ours yogi": str(next(iter(yogi_params.values())).dtype),
        "torch fused Adam": str(ps[0].dtype),
        "Flower FedAdam": str(next(iter(out["rec"].values())).numpy().dtype),
    }
    assert dtypes["ours adam"] == dtypes["ours yogi"] == "torch.float32", dtypes
    nbytes = 7 * 4 * p  # read x, g, m, v; write x, m, v
    ref = times["limit: torch.optim.Adam(fused=True)"]
    rows = []
    for name, ts in times.items():
        rows.append([
            name, med_min_max(ts, 1e3), med_min_max([nbytes / t / 1e9 for t in ts], 1, 1),
            f"{statistics.median(ratios(ref, ts)):.2f}",
        ])
    table = markdown_table(
        ["variant", "ms median (min-max)", "GB/s (7 x 4 x P / t)", "limit time / time"], rows
    )
    key = {
        "adam vs limit": ratios(ref, times["ours: adam step"]),
        "yogi vs limit": ratios(ref, times["ours: yogi step"]),
        "adam vs Flower FedAdam": ratios(
            times["Flower FedAdam step (aggregate stubbed)"], times["ours: adam step"]),
    }
    return table, key, dtypes


def plot(results: list[dict], path: Path) -> None:

    names = [LIMIT, OURS, CORE, FEDAVG, "Flower FedAdam.aggregate_train"]
    labels = ["limit (blocked axpy)", "ours: Merge", "ours: two-pass core", "Flower FedAvg",
              "Flower FedAdam"]
    fig, ax = figure(size=(8, 4))
    width = 0.8 / len(names)
    for j, name in enumerate(names):
        vals = [r["nbytes"] / statistics.median(r["times"][name]) / 1e9 for r in results]
        ax.bar([i + j * width for i in range(len(results))], vals, width, label=labels[j])
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(results))])
    ax.set_xticklabels([f"{r['k']} x {fmt_n(r['p'])}" for r in results])
    ax.set_ylabel("GB/s of client data merged (median)")
    ax.set_title("Merging K replies of P float32 (same replies, same run)")
    ax.legend(fontsize=8)
    save_figure(fig, path)


def verdict(xs: list[float], target: float | None) -> str:
    m = statistics.median(xs)
    text = f"{m:.2f} (min {min(xs):.2f}, max {max(xs):.2f})"
    if target is None:
        return text + " (no target)"
    return f"{text}: {'met' if m >= target else 'MISSED'} (target >= {target})"


def main(argv: list[str] | None = None) -> int:
    from aggregation.streaming import merge_threads

    ap = base_parser(__doc__.split("\n")[0])
    ap.add_argument("--configs", default=None, help="e.g. 10x10M,100x1M,8x50M,100x100K")
    ap.add_argument("--reps", type=int, default=None)
    ap.add_argument("--opt-p", type=parse_n, default=None)
    ap.add_argument("--profile", action="store_true", help="cProfile our aggregate_train")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--merge-threads", type=int, default=0,
                    help="our merge's workers (0: the run config's automatic choice)")
    ap.add_argument("--load", type=int, default=0,
                    help="busy-loop processes to run alongside (0: none)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    quiet()
    configs = args.configs or ("4x200K,20x50K" if args.quick else
                               "10x10M,100x1M,8x50M,100x100K")
    reps = args.reps or (2 if args.quick else 7)
    opt_p = args.opt_p or (parse_n("200K") if args.quick else parse_n("10M"))
    out = results_dir(args.out)

    suffix = "".join([f"-threads{args.threads}" if args.threads else "",
                      f"-merge-threads{args.merge_threads}" if args.merge_threads else "",
                      f"-load{args.load}" if args.load else ""])
    flags = "".join([" --quick" if args.quick else "",
                     f" --threads {args.threads}" if args.threads else "",
                     f" --merge-threads {args.merge_threads}" if args.merge_threads else "",
                     f" --load {args.load}" if args.load else "",
                     f" --configs {args.configs}" if args.configs else "",
                     f" --reps {args.reps}" if args.reps else ""])
    text = [f"# Merge speed{flags}\n\nMachine: {machine_line()}\n",
            f"Command: `python -m bench.merge_speed{flags}`; "
            f"{reps} round-robin repetitions after 1 warm-up; ratios are taken per "
            "repetition, then the median (min-max) over repetitions. "
            + (f"Load: {args.load} busy-loop processes ran for the whole measurement. "
               if args.load else "")
            + f"torch threads {torch.get_num_threads()}.\n"]
    results, summary_rows = [], []
    with busy_load(args.load):
        for cfg in configs.split(","):
            k, p = (parse_n(x) for x in cfg.lower().split("x"))
            workers = args.merge_threads or merge_threads(0, p)
            print(f"== {k} x {fmt_n(p)} (merge threads {workers}) ...", flush=True)
            res = merge_config(k, p, reps, args.profile,
                               2**20 if args.quick else MEMCPY_ELEMS, workers)
            gc.collect()  # the replies of this configuration are gone with its frame
            results.append(res)
            table, key = merge_table(res)
            text.append(f"## K = {k} replies x P = {fmt_n(p)} float32 "
                        f"({res['nbytes'] / 1e9:.2f} GB of client data; our merge's "
                        f"threads: {workers})\n\n{table}\n")
            if res["profile"]:
                text.append("cProfile of 3 calls of our merge (top by own time):\n\n"
                            "```\n" + res["profile"].strip() + "\n```\n")
            summary_rows.append([
                f"{k} x {fmt_n(p)}",
                verdict(key["vs Flower FedAvg"], target_vs_flower(k, p, args.load > 0)),
                verdict(key["vs limit"], target_vs_limit(p)),
                f"{statistics.median(key['vs old limit']):.2f}",
                f"{statistics.median(key['core vs limit']):.2f}",
                f"{statistics.median(key['limit vs Flower FedAvg']):.1f}",
                f"{statistics.median(key['vs Flower FedAdam']):.1f}",
                f"{statistics.median(key['packed vs limit']):.2f}",
                f"{statistics.median(key['packed vs Flower FedAvg']):.2f}",
            ])
        text.insert(2, "## Targets (ratios in the same run)\n\n" + markdown_table(
            ["K x P", "ours vs Flower FedAvg", "ours vs limit (blocked axpy)",
             "ours vs old limit", "two-pass core vs limit", "limit vs Flower FedAvg",
             "ours vs Flower FedAdam", "ours on packed replies vs limit",
             "ours on packed replies vs Flower FedAvg"], summary_rows) + "\n")
        png = out / f"merge_speed{suffix}.png"
        plot(results, png)
        text.append(f"![merge speed]({png.name})\n")

        print(f"== optimizer step, P = {fmt_n(opt_p)} ...", flush=True)
        table, key, dtypes = optimizer_bench(opt_p, reps)
        text.append(
            f"## Server optimizer step alone, P = {fmt_n(opt_p)}\n\n{table}\n\n"
            f"- ours adam vs the limit (target >= 0.8): {verdict(key['adam vs limit'], 0.8)}\n"
            f"- ours yogi vs the limit: {verdict(key['yogi vs limit'], 0.8)}\n"
            f"- ours adam vs Flower FedAdam's step (target >= 5x): "
            f"{verdict(key['adam vs Flower FedAdam'], 5.0)}\n"
            f"- dtypes after the step (input float32): "
            + ", ".join(f"{k} {v}" for k, v in dtypes.items()) + "\n"
        )
    write_report(out, f"merge_speed{suffix}", "\n".join(text))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
