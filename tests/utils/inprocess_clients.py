"""fedmerge's real ClientApp train function, called in this process for each pushed
message (no Ray): real training on a node's partition, for tests of the coordinator's
loops that need a model to really learn, fast."""

from __future__ import annotations

from flwr.app import Context, Message, RecordDict

from client.client_app import train


class InProcessClients:
    """``respond`` for an in-process grid: node ids 1..n are partitions 0..n-1."""

    def __init__(self, num_nodes: int) -> None:
        self.contexts = {
            node: Context(run_id=1, node_id=node, node_config={
                "partition-id": node - 1, "num-partitions": num_nodes},
                state=RecordDict(), run_config={})
            for node in range(1, num_nodes + 1)
        }

    @property
    def nodes(self) -> list[int]:
        return list(self.contexts)

    def __call__(self, msg: Message) -> Message:
        return train(msg, self.contexts[msg.metadata.dst_node_id])
