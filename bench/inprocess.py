"""A federation in this process, without Flower's simulation engine: a testing and
benchmark aid. ``InProcessGrid`` answers each pushed message by calling the real
ClientApp functions (``client.client_app.train`` / ``evaluate_shared``) with each
node's own Context (``partition-id`` / ``num-partitions``, its own state), and
``run_federation`` runs the real round loop, Merge and run store on it. An
``Adversary`` (bench/attacks.py) may rewrite the hostile nodes' replies once the
round's replies are all in.

Nodes are trained one after the other on this process's threads: a federation of 10
digits clients runs a round in a fraction of a second, where a Ray start alone costs
seconds.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from flwr.app import ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.serverapp import Grid
from flwr.supercore.run import Run

from bench.attacks import Adversary
from bench.common import stamp
from coordinator.config import parse_run_config
from coordinator.federation import FederationResult, run_federation
from coordinator.store import RoundRecord


class LocalGrid(Grid):
    """A Grid in this process: nodes 1..n answer each pushed message at once
    (``_answer``); subclasses say when a reply can be pulled. The messages pushed are
    kept in ``pushed``, with the ids a real Grid would give them."""

    def __init__(self, nodes: Iterable[int]) -> None:
        self.nodes = list(nodes)
        self.pushed: list[Message] = []
        self._count = 0

    def set_run(self, run: Run) -> None: ...

    @property
    def run(self) -> Run:
        raise NotImplementedError

    def create_message(self, content: RecordDict, message_type: str, dst_node_id: int,
                       group_id: str, ttl: float | None = None) -> Message:
        return Message(content, dst_node_id=dst_node_id, message_type=message_type,
                       group_id=group_id)

    def get_node_ids(self) -> Iterable[int]:
        return list(self.nodes)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        ids = []
        for m in messages:
            self._count += 1
            m.metadata.__dict__["_message_id"] = f"msg-{self._count}"  # as a Grid does
            self.pushed.append(m)
            ids.append(m.metadata.message_id)
            self._answer(m)
        self._pushed_all()
        return ids

    def _answer(self, m: Message) -> None:
        raise NotImplementedError

    def _pushed_all(self) -> None:
        """After a push: e.g. reorder or rewrite the replies of the whole push."""

    def send_and_receive(self, messages: Iterable[Message], *,
                         timeout: float | None = None) -> Iterable[Message]:
        raise NotImplementedError("the loops push and pull")


class InProcessGrid(LocalGrid):
    """Nodes 1..len(partitions); node i holds partition ``partitions[i - 1]`` of
    ``num_partitions``."""

    def __init__(self, partitions: Sequence[int], num_partitions: int,
                 adversary: Adversary | None = None) -> None:
        super().__init__(range(1, len(partitions) + 1))
        self.partitions = list(partitions)
        self.adversary = adversary
        self.contexts = {
            node: Context(run_id=1, node_id=node, node_config={
                "partition-id": pid, "num-partitions": num_partitions},
                state=RecordDict(), run_config={})
            for node, pid in enumerate(self.partitions, start=1)
        }
        self._ready: list[Message] = []
        self._train_replies: dict[int, Message] = {}  # of the push, by partition
        self._round = 0

    def _answer(self, m: Message) -> None:
        from client.client_app import evaluate_shared, train

        node = m.metadata.dst_node_id
        pid = self.partitions[node - 1]
        stamp(node)
        if m.metadata.message_type == MessageType.TRAIN:
            self._round = int(m.content["config"]["server-round"])
            reply = train(self._for(m, pid), self.contexts[node])
            self._train_replies[pid] = reply
        else:
            reply = evaluate_shared(m, self.contexts[node])
        self._ready.append(reply)

    def _pushed_all(self) -> None:
        if self.adversary is not None and self._train_replies:
            self.adversary.rewrite(self._train_replies, self._round)
        self._train_replies = {}

    def _for(self, m: Message, pid: int) -> Message:
        """The message a node trains on: a hostile one may get another task."""
        task = None if self.adversary is None else self.adversary.task_for(pid)
        if task is None:
            return m
        config = ConfigRecord({**dict(m.content["config"]), "task": task})
        content = RecordDict({k: v for k, v in m.content.items() if k != "config"})
        content["config"] = config
        out = Message(content, dst_node_id=m.metadata.dst_node_id,
                      message_type=m.metadata.message_type)
        out.metadata.__dict__["_message_id"] = m.metadata.message_id
        return out

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        wanted = set(message_ids)
        out = [r for r in self._ready if r.metadata.reply_to_message_id in wanted]
        self._ready = [r for r in self._ready if r.metadata.reply_to_message_id not in wanted]
        return out


def run_inprocess(
    config: dict[str, Any], partitions: Sequence[int], num_partitions: int,
    adversary: Adversary | None = None, on_commit=None,
) -> FederationResult:
    """One federation of the given partitions (a run config without ``num-clients`` and
    ``min-nodes``: they follow ``partitions``)."""
    cfg = parse_run_config({**config, "num-clients": num_partitions,
                            "min-nodes": len(partitions)})
    grid = InProcessGrid(partitions, num_partitions, adversary)
    stamp(0)  # the coordinator's messages need a task identity too
    return run_federation(grid, cfg, on_commit=on_commit)


def central_curve(records: list[RoundRecord]) -> list[float]:
    """Central accuracy after each committed round."""
    return [next(e.accuracy for e in r.evaluations if e.kind == "central") for r in records]
