"""A testing aid: node config ``slowdown = k`` (k >= 1, off by default) makes this node
k times slower: after training, the ClientApp sleeps (k - 1) x its measured train time.
It simulates heterogeneous workers (one GPU several times slower than another) in tests
and benchmarks; a real deployment leaves it unset.

On a SuperNode: ``--node-config "slowdown=5"``. Flower's simulation engine gives nodes
only their partition, so ``slowed_app`` wraps the ClientApp to set it by partition id.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping

from flwr.app import Context, Message
from flwr.clientapp import ClientApp

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


def slowed_app(factors: Mapping[int, float]) -> ClientApp:
    """fedmerge's ClientApp with ``slowdown`` set on the simulated nodes of the given
    partition ids (partition id -> k), for the simulation engine."""
    from client.client_app import evaluate_shared, train

    app = ClientApp()

    def with_slowdown(context: Context) -> Context:
        pid = int(str(context.node_config.get("partition-id", -1)))
        if pid in factors:
            context.node_config[SLOWDOWN_KEY] = float(factors[pid])
        return context

    @app.train()
    def _train(msg: Message, context: Context) -> Message:
        return train(msg, with_slowdown(context))

    @app.evaluate()
    def _evaluate(msg: Message, context: Context) -> Message:
        return evaluate_shared(msg, context)

    return app
