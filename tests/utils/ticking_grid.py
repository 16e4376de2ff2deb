"""An in-process Grid with nodes of different speeds, on a virtual clock: each pull is
one tick, and a node's reply to a message is ready ``ticks[node]`` ticks after its push
(``respond`` computes it at the push; None: the node never answers). Deterministic, so
the asynchronous loop's interleavings can be tested exactly."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

from flwr.app import Message

from bench.inprocess import LocalGrid

Respond = Callable[[Message], Message | None]


class TickingGrid(LocalGrid):
    def __init__(self, nodes: Iterable[int], respond: Respond, ticks: Mapping[int, int]) -> None:
        super().__init__(nodes)
        self.respond = respond
        self.ticks = dict(ticks)
        self.now = 0
        self._ready: list[tuple[int, Message]] = []  # (tick it is ready at, reply)

    def _answer(self, m: Message) -> None:
        answer = self.respond(m)
        if answer is not None:
            self._ready.append((self.now + self.ticks[m.metadata.dst_node_id], answer))

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        self.now += 1
        wanted = set(message_ids)
        out = [r for at, r in self._ready
               if at <= self.now and r.metadata.reply_to_message_id in wanted]
        self._ready = [(at, r) for at, r in self._ready if all(r is not o for o in out)]
        return out
