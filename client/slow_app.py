"""fedmerge's ClientApp with the ``slowdown`` testing aid (client/slowdown.py) set per
simulated node: Flower's simulation engine gives its nodes only their partition."""

from __future__ import annotations

from collections.abc import Mapping

from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from client.client_app import evaluate_shared, train
from client.slowdown import SLOWDOWN_KEY


def slowed_app(factors: Mapping[int, float]) -> ClientApp:
    """fedmerge's ClientApp with ``slowdown`` set on the simulated nodes of the given
    partition ids (partition id -> k), for the simulation engine."""
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
