"""A testing aid: node config ``slowdown = k`` (k >= 1, off by default) makes this node
k times slower: after training, the ClientApp sleeps (k - 1) x its measured train time.
It simulates heterogeneous workers (one GPU several times slower than another) in tests
and benchmarks; a real deployment leaves it unset.

On a SuperNode: ``--node-config "slowdown=5"``. Flower's simulation engine gives nodes
only their partition, so ``client.slow_app.slowed_app`` sets it by partition id.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping

SLOWDOWN_KEY = "slowdown"


class SlowdownError(ValueError):
    """The node config's slowdown is not a number >= 1."""


def slowdown_of(node_config: Mapping[str, object]) -> float:
    """The node's slowdown factor k (1: off, the default)."""
    raw = node_config.get(SLOWDOWN_KEY, 1.0)
    try:
        k = float(raw)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise SlowdownError(f"node config {SLOWDOWN_KEY}: not a number: {raw!r}") from None
    if not (math.isfinite(k) and k >= 1.0):
        raise SlowdownError(f"node config {SLOWDOWN_KEY}: must be a finite number >= 1, "
                            f"got {raw!r}")
    return k


def pause(node_config: Mapping[str, object], train_seconds: float) -> float:
    """Sleep (k - 1) x ``train_seconds``; the seconds slept."""
    extra = (slowdown_of(node_config) - 1.0) * max(train_seconds, 0.0)
    if extra > 0:
        time.sleep(extra)
    return extra
