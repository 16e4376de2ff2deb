"""Coordinator memory of the exact LoRA merge: peak RSS of one round's merge of K replies
(each holding one client's factors A_i, B_i), against 2 x (targeted weights + one
client's adapters).

Each (shape set, K) runs in a fresh process: theta (the targeted weights, float32) is
made and touched first, then one round of the run's Merge (the examples-weighted mean,
SGD) takes K replies from a generator that builds each reply only when the merge pulls it
and keeps none. Reported: T (theta's bytes), a (one client's factors), the bound
2 (T + a), the merge's peak above the process before it (``added``), and theta + added,
the coordinator's memory for the merge, against the bound.

  tiny         the causal-lm task's tiny model (q_proj, v_proj of 2 layers, hidden 64,
               rank 8): T is 64 KiB, below what peak RSS resolves; shown for the record
  synthetic    8 layers x (q_proj, v_proj) of 2048 x 2048, rank 16: T = 256 MiB

    python -m bench.lora_memory [--quick] [--ks 2,5,10,20] [--shapes tiny,synthetic]
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator

from bench.common import (
    base_parser,
    machine_line,
    markdown_table,
    peak_rss_bytes,
    results_dir,
    run_worker,
)

SHAPES = ("tiny", "synthetic")
MIB = 2**20



def _layout(shape: str, hidden: int):
    """theta's shapes and the replies' factors (names, scale) for a shape set."""
    import torch

    from client.tasks.api import LowRank
    from coordinator.low_rank import LowRankReplies, low_rank_replies

    if shape == "tiny":
        from bench.lora import LORA

        replies = low_rank_replies("causal-lm", json.dumps({**LORA, "lora-merge": "exact"}), 0)
        assert replies is not None
        return replies
    layers, rank = 8, 16
    layout, template = {}, {}
    for i in range(layers):
        for m in ("q_proj", "v_proj"):
            p = f"model.layers.{i}.self_attn.{m}"
            layout[f"{p}.base_layer.weight"] = LowRank(f"{p}.lora_A.default.weight",
                                                       f"{p}.lora_B.default.weight", 2.0)
            template[f"{p}.lora_A.default.weight"] = torch.empty(rank, hidden, device="meta")
            template[f"{p}.lora_B.default.weight"] = torch.empty(hidden, rank, device="meta")
    return LowRankReplies(layout, template)


def worker(shape: str, k: int, hidden: int) -> dict:
    import torch

    from aggregation import ServerState, WeightedMean, sgd
    from bench.common import quiet, train_reply
    from coordinator.grid import Reply
    from coordinator.merge import Merge
    from coordinator.replies import ReplyValidator

    quiet()
    low_rank = _layout(shape, hidden)
    t = low_rank.template
    theta = {}
    for name, f in low_rank.layout.items():
        rows, cols = t[f.b].shape[0], t[f.a].shape[1]
        theta[name] = torch.full((cols, rows) if f.transposed else (rows, cols), 0.01)
    theta_bytes = sum(x.numel() * x.element_size() for x in theta.values())
    adapter_bytes = sum(x.numel() * x.element_size() for x in t.values())

    def replies(n: int) -> Iterator[Reply]:
        for i in range(n):
            gen = torch.Generator().manual_seed(i)
            arrays = {name: torch.randn(m.shape, generator=gen) * 0.01 for name, m in t.items()}
            msg = train_reply(arrays, examples=100 + i, node=i + 1)
            del arrays
            yield Reply(str(i + 1), msg)
            del msg

    opt = sgd(lr=1.0)
    merge = Merge(ReplyValidator(low_rank=low_rank), WeightedMean(), opt)
    state = ServerState(theta, opt.init(theta))
    for _ in replies(1):  # warm-up: building one reply is not the merge's cost
        pass
    before = peak_rss_bytes()
    state, report = merge(state, replies(k))
    peak = peak_rss_bytes()
    assert report.accepted == k, [c.reason for c in report.clients]
    return {"shape": shape, "k": k, "theta": theta_bytes, "adapters": adapter_bytes,
            "before": before, "peak": peak, "added": max(0, peak - before)}


def run_one(shape: str, k: int, hidden: int) -> dict:
    return run_worker("bench.lora_memory", [shape, "--k", str(k), "--hidden", str(hidden)],
                      f"{shape} K={k}")


def main(argv: list[str] | None = None) -> int:
    ap = base_parser(__doc__.split("\n")[0])
    ap.add_argument("--ks", default=None)
    ap.add_argument("--shapes", default=",".join(SHAPES))
    ap.add_argument("--hidden", type=int, default=None, help="synthetic: d_in = d_out")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--k", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    hidden = args.hidden or (512 if args.quick else 2048)
    if args.worker:
        print(json.dumps(worker(args.worker, args.k, hidden)))
        return 0
    ks = [int(x) for x in (args.ks or ("2,5" if args.quick else "2,5,10,20")).split(",")]
    rows, verdicts = [], []
    for shape in args.shapes.split(","):
        if shape not in SHAPES:
            print(f"error: --shapes: unknown shape set {shape!r} (known: {', '.join(SHAPES)})")
            return 2
        results = []
        for k in ks:
            r = run_one(shape, k, hidden)
            results.append(r)
            bound = 2 * (r["theta"] + r["adapters"])
            used = r["theta"] + r["added"]
            rows.append([shape, k, f"{r['theta'] / MIB:.3f}", f"{r['adapters'] / MIB:.3f}",
                         f"{bound / MIB:.2f}", f"{r['added'] / MIB:.2f}",
                         f"{used / MIB:.2f}", f"{used / bound:.2f}"])
            print(" | ".join(map(str, rows[-1])), flush=True)
        growth = (results[-1]["added"] - results[0]["added"]) / results[0]["theta"]
        worst = max((r["theta"] + r["added"]) / (2 * (r["theta"] + r["adapters"]))
                    for r in results)
        verdicts.append(f"- {shape}: theta + added is at most {worst:.2f} x the bound; from "
                        f"K={ks[0]} to K={ks[-1]} the merge's peak grows by {growth:+.2f} T")
    flag = " --quick" if args.quick else ""
    text = "\n".join([
        "# Coordinator memory of the exact LoRA merge vs K\n",
        f"Machine: {machine_line()}\n",
        f"Command: `python -m bench.lora_memory{flag}`; each (shape set, K) in a fresh "
        "process; replies built lazily; the round's Merge (mean, SGD).\n",
        markdown_table(["shapes", "K", "T: theta MiB", "a: one client's factors MiB",
                        "bound 2 (T + a) MiB", "added by the merge MiB",
                        "theta + added MiB", "/ bound"], rows),
        "", *verdicts, "",
    ])
    out = results_dir(args.out) / "lora_memory.md"
    out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
