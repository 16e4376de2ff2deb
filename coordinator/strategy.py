"""``MergeStrategy``: Flower's FedAvg, for what fedmerge reuses of it: sampling the nodes
of a round (``random.sample`` over the connected nodes, waiting for ``min_available_nodes``)
and building the round's messages (theta under "arrays", the round's config under
"config", the round number injected as "server-round").

The round itself (send, merge, evaluate, checkpoint, commit) is fedmerge's own loop:
coordinator/rounds.py. The merge is ``coordinator.merge.Merge``; this class does not
aggregate, and says so if Flower's ``start()`` is called on it.
"""

from __future__ import annotations

from collections.abc import Iterable

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from aggregation import ServerState
from coordinator.payloads import packed_record


class MergeStrategy(FedAvg):
    """Sampling and messages of a round; the options are FedAvg's (``fraction_train``,
    ``min_train_nodes``, ...)."""

    def train_messages(
        self, state: ServerState, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """The train messages of the round after ``state``, carrying its theta. Clients
        see the run's round number (it seeds their local SGD), which counts on when a
        run resumes."""
        return self.configure_train(state.round + 1, packed_record(state.params), config, grid)

    def evaluate_messages(
        self, state: ServerState, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """The evaluate messages for ``state``'s theta (none if fraction-evaluate is 0)."""
        return self.configure_evaluate(state.round, packed_record(state.params), config, grid)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        raise TypeError("MergeStrategy does not aggregate: run rounds with coordinator.rounds")

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        raise TypeError("MergeStrategy does not aggregate: run rounds with coordinator.rounds")
