"""The coordinator's per-reply cost: ``decode_reply`` over K replies of a P-parameter model,
the replies packed (one Array, as our ClientApp sends them) or one .npy Array per tensor
(a ClientApp written against Flower's API), against reading the same bytes once.

  decode, headers only   decode_reply(values=False): records, manifest or .npy headers,
                         names, shapes, dtypes, examples; the views, no value read
  decode + norm          decode_reply: the above and one read of the offset (finite
                         values, norm bound), what the two-pass merge calls
  read the bytes         the offsets' squared norm from pre-made views: the floor

    python -m bench.reply_decode [--k 100] [--p 100K] [--reps 20]
"""

from __future__ import annotations

import torch

from bench.common import (
    Variant,
    base_parser,
    machine_line,
    markdown_table,
    med_min_max,
    model_layout,
    parse_n,
    random_params,
    round_robin,
    stamp,
    train_reply,
)


def main() -> None:
    parser = base_parser(__doc__ or "")
    parser.add_argument("--k", type=int, default=100)
    parser.add_argument("--p", type=parse_n, default=parse_n("100K"))
    parser.add_argument("--reps", type=int, default=20)
    args = parser.parse_args()

    from coordinator.payloads import ignore_readonly_view_warning
    from coordinator.replies import UpdateLimits, decode_reply

    ignore_readonly_view_warning()
    layout = model_layout(args.p)
    template = {name: torch.zeros(shape) for name, shape in layout}
    per_tensor = []
    for i in range(args.k):
        stamp(i + 1)
        per_tensor.append(train_reply(random_params(layout, seed=i), examples=100, node=i + 1))
    packed = [train_reply(decode_reply(msg, template, UpdateLimits()).update.offset,
                          examples=100, node=msg.metadata.dst_node_id, packed=True)
              for msg in per_tensor]
    views = [decode_reply(m, template, UpdateLimits()).update.offset for m in packed]

    def decode(replies: list, values: bool) -> None:
        for msg in replies:
            decode_reply(msg, template, UpdateLimits(), values=values)

    def read_bytes() -> None:
        for offset in views:
            sum(float(torch.linalg.vector_norm(t)) ** 2 for t in offset.values())

    variants = [
        Variant("decode, headers only: packed", lambda: decode(packed, False)),
        Variant("decode, headers only: per tensor", lambda: decode(per_tensor, False)),
        Variant("decode + norm: packed", lambda: decode(packed, True)),
        Variant("decode + norm: per tensor", lambda: decode(per_tensor, True)),
        Variant("read the bytes (norm of views)", read_bytes),
    ]
    times = round_robin(variants, args.reps)
    rows = [[name, med_min_max(ts, 1e3), f"{1e6 * min(ts) / args.k:.1f}"]
            for name, ts in times.items()]
    print(f"{args.k} replies x {args.p} float32 parameters in {len(layout)} tensors; "
          f"{args.reps} repetitions, interleaved. {machine_line()}\n")
    print(markdown_table(["", "ms for all K: median (min-max)", "us per reply (min)"], rows))


if __name__ == "__main__":
    main()
