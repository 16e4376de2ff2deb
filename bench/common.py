"""What every benchmark shares: timing (round-robin, same-run ratios), the machine's
description, markdown tables and where results go, and reply Messages as a ClientApp
sends them."""

from __future__ import annotations

import argparse
import datetime as _dt
import importlib
import json
import logging
import os
import platform
import signal
import statistics
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

RESULTS_ENV = "FEDMERGE_BENCH_RESULTS"  # where tables and plots go (default bench/results)


class MissingDependency(RuntimeError):
    """A benchmark needs a package the project does not depend on; the message says how
    to install it."""


def require(module: str, install: str) -> object:
    """Import ``module`` or fail with the command that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingDependency(
            f"this benchmark needs the {module!r} package: {install}"
        ) from None


# --- arguments ------------------------------------------------------------------------

def parse_n(text: str) -> int:
    """'10M' -> 10_000_000, '256K' -> 256_000, '1500' -> 1500."""
    s = text.strip().upper()
    mult = 1
    if s.endswith("M"):
        mult, s = 1_000_000, s[:-1]
    elif s.endswith("K"):
        mult, s = 1_000, s[:-1]
    return int(float(s) * mult)


def fmt_n(n: int) -> str:
    if n >= 1_000_000 and n % 1_000_000 == 0:
        return f"{n // 1_000_000}M"
    if n >= 1_000 and n % 1_000 == 0:
        return f"{n // 1_000}K"
    return str(n)


def base_parser(description: str) -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--quick", action="store_true", help="a tiny setting that runs in seconds")
    ap.add_argument("--out", type=Path, default=None,
                    help=f"results folder (default: ${RESULTS_ENV} or bench/results)")
    return ap


def results_dir(out: Path | None) -> Path:
    path = out or Path(os.environ.get(RESULTS_ENV, Path(__file__).parent / "results"))
    path.mkdir(parents=True, exist_ok=True)
    return path


def quiet() -> None:
    """Flower logs every round at INFO; the benchmarks print their own tables."""
    import flwr.common.logger  # noqa: F401 - it sets the level when imported: first

    logging.getLogger("flwr").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
    warnings.filterwarnings("ignore", message="The given buffer is not writable")


# --- the machine ----------------------------------------------------------------------

def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        for line in out.splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def code_version() -> str:
    """The checkout's commit, and whether the working tree differs from it."""
    root = Path(__file__).resolve().parents[1]
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root,
                              capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=root, capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return "unknown commit"
    return f"commit {head}" + (" + uncommitted changes" if dirty.strip() else "")


def machine_line() -> str:
    """One line: cores, CPU, torch threads, library versions, code, load, date."""
    import flwr

    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return (
        f"{os.cpu_count()} cores (`nproc`), {cpu_model()}, torch {torch.__version__} "
        f"({torch.get_num_threads()} threads), flwr {flwr.__version__}, numpy "
        f"{np.__version__}, Python {platform.python_version()}; {code_version()}; "
        f"load average at start "
        f"{load}; {_dt.datetime.now().strftime('%Y-%m-%d %H:%M')}"
    )


# --- timing ---------------------------------------------------------------------------

@dataclass
class Variant:
    name: str
    fn: Callable[[], object]
    setup: Callable[[], object] | None = None  # run before each timed call, not timed
    bytes_moved: float = 0.0  # for GB/s


def round_robin(variants: Sequence[Variant], reps: int, warmup: int = 1) -> dict[str, list[float]]:
    """Seconds per call of each variant, interleaved: repetition r runs every variant
    once, so a burst of load from the neighbours hits all of them alike and the ratio of
    two variants in the same repetition is comparable."""
    times: dict[str, list[float]] = {v.name: [] for v in variants}
    for r in range(warmup + reps):
        for v in variants:
            if v.setup is not None:
                v.setup()
            t0 = time.perf_counter()
            v.fn()
            dt = time.perf_counter() - t0
            if r >= warmup:
                times[v.name].append(dt)
    return times


def med_min_max(xs: Sequence[float], scale: float = 1.0, digits: int = 2) -> str:
    """'median (min-max)' of ``xs`` times ``scale``."""
    ys = [x * scale for x in xs]
    return f"{statistics.median(ys):.{digits}f} ({min(ys):.{digits}f}-{max(ys):.{digits}f})"


def ratios(a: Sequence[float], b: Sequence[float]) -> list[float]:
    """a[r] / b[r] per repetition r."""
    return [x / y for x, y in zip(a, b, strict=True)]


# --- reports --------------------------------------------------------------------------

def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    def cell(x: object) -> str:
        return str(x).replace("|", "\\|")

    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(cell(x) for x in row) + " |" for row in rows]
    return "\n".join(lines)


def figure(ncols: int = 1, *, size: tuple[float, float]) -> tuple[Any, Any]:
    """A figure and its axes from matplotlib's object API: no pyplot state, nothing to
    close, any thread."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=size)
    return fig, fig.subplots(1, ncols)


def save_figure(fig: Any, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def write_report(out: Path, name: str, text: str) -> Path:
    """Write ``text`` to ``out/name.md`` and print it."""
    path = out / f"{name}.md"
    path.write_text(text.rstrip() + "\n")
    print(text)
    print(f"\n(written to {path})")
    return path


# --- replies as a ClientApp sends them ------------------------------------------------

def model_layout(p: int, layers: int = 16, bias: int = 1024) -> list[tuple[str, tuple[int, ...]]]:
    """``layers`` (weight, bias) pairs holding exactly ``p`` float32 values: 2 x layers
    tensors, as in reference/bench (a weight of rows of 256 where it divides)."""
    rest = p - layers * bias
    if rest < layers:
        raise ValueError(f"P={p} is too small for {layers} layers")
    out = []
    for i in range(layers):
        n = rest // layers + (1 if i < rest % layers else 0)
        out.append((f"layer{i}.weight", (n // 256, 256) if n % 256 == 0 else (n, 1)))
        out.append((f"layer{i}.bias", (bias,)))
    return out


def random_params(layout: list[tuple[str, tuple[int, ...]]], seed: int,
                  scale: float = 0.01) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {k: torch.randn(shape, generator=gen) * scale for k, shape in layout}


def stamp(node: int) -> None:
    """Message() outside a running app needs a task identity; Flower stamps the sender
    node from it."""
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.run_id = 1
    TaskIdentity.task_id = 1
    TaskIdentity.node_id = node


def train_reply(arrays: dict[str, torch.Tensor], *, examples: int, node: int,
                packed: bool = False):
    """A train reply Message: ArrayRecord 'arrays' and MetricRecord 'metrics' with
    num-examples; ``packed``: the tensors in one Array, as client/client_app.py answers
    fedmerge's coordinator (else one .npy Array per tensor, what Flower's strategies read)."""
    from flwr.app import ArrayRecord, Message, MessageType, MetricRecord, RecordDict

    from client.metrics import TRAIN_LOSS
    from client.packed import packed_record
    from client.task import METRICS_KEY, NUM_EXAMPLES, OFFSET_KEY

    stamp(node)
    content = RecordDict({
        OFFSET_KEY: packed_record(arrays) if packed else ArrayRecord(arrays),
        METRICS_KEY: MetricRecord({NUM_EXAMPLES: examples, TRAIN_LOSS: 0.5}),
    })
    return Message(content, dst_node_id=node, message_type=MessageType.TRAIN)


class FakeGrid:
    """Enough of a Grid for FedOpt.configure_train (which stores the current arrays)."""

    def __init__(self, n: int) -> None:
        self.n = n

    def get_node_ids(self) -> list[int]:
        return list(range(1, self.n + 1))


# --- a bounded load of our own --------------------------------------------------------

@contextmanager
def busy_load(processes: int) -> Iterator[None]:
    """``processes`` busy-loop Python processes for the duration of the block (a machine
    shared with other jobs, made reproducible); each is ended by its own pid after."""
    procs = [subprocess.Popen([sys.executable, "-c", _BUSY_LOOP]) for _ in range(processes)]
    previous = signal.signal(signal.SIGTERM, _exit_on_sigterm) if procs else None
    try:
        time.sleep(0.2 if procs else 0.0)  # let them reach the CPU
        yield
    finally:
        for p in procs:
            p.kill()
        for p in procs:
            p.wait()
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


# Spins; stops by itself once its parent is gone (a bench killed without cleanup).
_BUSY_LOOP = """
import os
parent = os.getppid()
while os.getppid() == parent:
    for _ in range(1_000_000):
        pass
"""


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)  # so the busy loops are ended by the finally above


def peak_rss_bytes() -> int:
    """This process's peak resident set size so far."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def run_worker(module: str, args: Sequence[str], what: str) -> dict:
    """``python -m module --worker ARGS`` in a fresh interpreter (so its peak RSS is its
    own), one torch thread unless OMP_NUM_THREADS says otherwise; the JSON object it
    printed last."""
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    proc = subprocess.run([sys.executable, "-m", module, "--worker", *args],
                          capture_output=True, text=True, env=env,
                          cwd=Path(__file__).resolve().parents[1])
    if proc.returncode != 0:
        raise RuntimeError(f"worker {what} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])
