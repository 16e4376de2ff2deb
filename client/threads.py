"""How many torch threads a task trains and evaluates with (node config ``threads``).

torch's intra-op threads split each op and wait at its end for the slowest share. On a
small model every op is tiny, so the split costs more than it saves, and when the cores
are busy (another worker, another job) the wait for a descheduled share makes a step
many times slower: the digits MLP took 22 ms a step on 2 threads on a loaded 2-core
machine and 1 ms on one. Flower's simulation engine avoids this by giving each Ray actor
its CPU share as its thread count; a deployment worker gets this rule instead.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping

import torch

THREADS_KEY = "threads"
SMALL_MODEL = 1 << 20
"""Parameters below which a task runs on one thread."""


class ThreadsError(ValueError):
    """The node config's threads is not an integer >= 0."""


def threads_of(node_config: Mapping[str, object], model: torch.nn.Module) -> int:
    """``threads`` from the node config when > 0; else (0, the default) one thread for a
    model under ``SMALL_MODEL`` parameters and the process's own count above."""
    raw = node_config.get(THREADS_KEY, 0)
    if isinstance(raw, bool) or not isinstance(raw, int | str):
        raise ThreadsError(f"node config {THREADS_KEY}: not an integer: {raw!r}")
    try:
        setting = int(raw)
    except ValueError:
        raise ThreadsError(f"node config {THREADS_KEY}: not an integer: {raw!r}") from None
    if setting < 0:
        raise ThreadsError(f"node config {THREADS_KEY}: must be >= 0 (0: automatic), "
                           f"got {raw!r}")
    if setting:
        return setting
    numel = sum(p.numel() for p in model.parameters())
    return 1 if numel < SMALL_MODEL else torch.get_num_threads()


@contextlib.contextmanager
def torch_threads(threads: int) -> Iterator[int]:
    """Run the block on ``threads`` torch threads, then restore the process's count (a
    simulation actor or an in-process federation runs other work after a task)."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield threads
    finally:
        torch.set_num_threads(before)


def task_threads(node_config: Mapping[str, object],
                 model: torch.nn.Module) -> contextlib.AbstractContextManager[int]:
    """``torch_threads`` with the count ``threads_of`` chooses for this task."""
    return torch_threads(threads_of(node_config, model))
