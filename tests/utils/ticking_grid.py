"""An in-process Grid with nodes of different speeds, on a virtual clock: each pull is
one tick, and a node's reply to a message is ready ``ticks[node]`` ticks after its push
(``respond`` computes it at the push; None: the node never answers). Deterministic, so
the asynchronous loop's interleavings can be tested exactly."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

from flwr.app import Message, RecordDict
from flwr.serverapp import Grid
from flwr.supercore.run import Run

Respond = Callable[[Message], Message | None]


class TickingGrid(Grid):
    def __init__(self, nodes: Iterable[int], respond: Respond, ticks: Mapping[int, int]) -> None:
        self.nodes = list(nodes)
        self.respond = respond
        self.ticks = dict(ticks)
        self.now = 0
        self.pushed: list[Message] = []
        self._ready: list[tuple[int, Message]] = []  # (tick it is ready at, reply)
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
            answer = self.respond(m)
            if answer is not None:
                self._ready.append((self.now + self.ticks[m.metadata.dst_node_id], answer))
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        self.now += 1
        wanted = set(message_ids)
        out = [r for at, r in self._ready
               if at <= self.now and r.metadata.reply_to_message_id in wanted]
        self._ready = [(at, r) for at, r in self._ready if all(r is not o for o in out)]
        return out

    def send_and_receive(self, messages: Iterable[Message], *,
                         timeout: float | None = None) -> Iterable[Message]:
        raise NotImplementedError("the loops push and pull")
