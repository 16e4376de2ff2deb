"""Scale: a simulated federation of many clients (Shakespeare, one client per role), a
fraction sampled per round, and the coordinator's process-tree peak memory.

The coordinator here is this process and everything it starts (Ray's GCS, raylet and
the client actors): psutil sums the resident memory of the whole tree every
``SAMPLE_S`` seconds in a thread, and the peak of that sum is reported with the seconds
per round. Run it at two sizes (``--clients 100``, ``--clients 1000``) and compare: the
coordinator's memory should not grow with the clients it does not sample.

Roles with at least ``--min-lines`` lines (default 4: every such role has a training, a
validation and a test line) give 1,031 clients from the shipped text; ``--clients``
takes the first N in the fixed role order. ``--quick``: the small fixture text (every
role a client), 2 rounds.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import threading
import time
from pathlib import Path

import psutil

from bench.common import (
    base_parser,
    machine_line,
    markdown_table,
    quiet,
    results_dir,
    write_report,
)

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "shakespeare"
SAMPLE_S = 0.2


class TreePeak:
    """The peak of the summed RSS of this process and all its descendants."""

    def __init__(self) -> None:
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def sample(self) -> int:
        root = psutil.Process()
        total = 0
        for p in [root, *root.children(recursive=True)]:
            try:
                total += p.memory_info().rss
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue  # ended between the listing and the read
        self.peak = max(self.peak, total)
        return total

    def _run(self) -> None:
        while not self._stop.wait(SAMPLE_S):
            self.sample()

    def __enter__(self) -> TreePeak:
        self.sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def main(argv: list[str] | None = None) -> int:
    ap = base_parser(__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=0, help="default 10 (--quick: 2)")
    ap.add_argument("--fraction", type=float, default=0.05,
                    help="fraction-train and fraction-evaluate")
    ap.add_argument("--min-lines", type=int, default=4)
    ap.add_argument("--local-epochs", type=int, default=1)
    args = ap.parse_args(argv)
    quiet()
    from client import shakespeare

    if args.quick:
        os.environ.setdefault(shakespeare.SOURCE_ENV, str(FIXTURE.resolve()))
    os.environ[shakespeare.MIN_LINES_ENV] = str(args.min_lines)  # the client actors inherit it
    rounds = args.rounds or (2 if args.quick else 10)
    try:
        roles = shakespeare.client_roles()
        shakespeare.central_test_set()  # parsed once here, before Ray starts
    except (shakespeare.ShakespeareUnavailable, ValueError) as exc:
        print(f"error: {exc}")
        return 2
    clients = len(roles) if args.quick else args.clients
    if clients > len(roles):
        print(f"error: --clients {clients} but only {len(roles)} roles have >= "
              f"{args.min_lines} lines (--min-lines)")
        return 2

    from coordinator.config import parse_run_config
    from coordinator.simulation import simulate

    out = results_dir(args.out)
    work = tempfile.TemporaryDirectory(prefix="fedmerge-scale-")  # the run's store
    cfg = parse_run_config({
        "task": "shakespeare", "num-clients": clients, "num-server-rounds": rounds,
        "fraction-train": args.fraction, "fraction-evaluate": args.fraction, "min-nodes": 2,
        "local-epochs": args.local_epochs, "device": "cpu", "out-dir": work.name,
    })
    load = os.getloadavg()
    round_s: list[float] = []
    sampled: list[int] = []

    def on_commit(rec) -> None:
        round_s.append((rec.finished_at - rec.started_at).total_seconds())
        sampled.append(len(rec.updates))
        print(f"round {rec.number}: {len(rec.updates)} replies, {round_s[-1]:.1f} s", flush=True)

    t0 = time.perf_counter()
    with TreePeak() as tree:
        result = simulate(cfg, num_clients=clients, on_commit=on_commit)
    wall = time.perf_counter() - t0
    work.cleanup()
    load_after = os.getloadavg()
    row = [clients, f"{args.fraction:g}", rounds, result.rounds,
           f"{statistics.median(sampled) if sampled else 0:g}",
           f"{tree.peak / 2**20:.0f}",
           f"{round_s[0]:.1f}" if round_s else "-",
           f"{statistics.median(round_s[1:]):.1f}" if len(round_s) > 1 else "-",
           f"{wall:.0f}", f"{load[0]:.1f} / {load_after[0]:.1f}"]
    heads = ["clients", "fraction", "rounds asked", "rounds done", "replies per round",
             "process-tree peak MiB", "first round s (actors start)",
             "median s per later round", "total s (Ray start included)",
             "load avg 1 min (start / end)"]
    text = [
        "# Scale: many simulated clients, a fraction per round\n",
        f"Machine: {machine_line()}\n",
        f"Command: `python -m bench.scale{' --quick' if args.quick else ''} --clients "
        f"{clients}`; Shakespeare roles with >= {args.min_lines} lines ({len(roles)} roles), "
        f"the first {clients} are the clients; {args.local_epochs} local epoch(s); "
        "process-tree peak = the summed RSS of this process and its children (Ray), "
        f"sampled every {SAMPLE_S} s.\n",
        markdown_table(heads, [row]) + "\n",
    ]
    write_report(out, f"scale-{clients}", "\n".join(text))
    return 0 if result.rounds == rounds else 1


if __name__ == "__main__":
    raise SystemExit(main())
