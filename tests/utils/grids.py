"""An in-process Grid for tests: each pushed message is answered by ``respond`` (None: the
node never answers), and replies come back ``per_pull`` at a time, in push order, or in
the order ``order`` gives (node ids)."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from flwr.app import Message

from bench.inprocess import LocalGrid

Respond = Callable[[Message], Message | None]


class ScriptedGrid(LocalGrid):
    def __init__(
        self, nodes: Iterable[int], respond: Respond, *, per_pull: int = 1,
        order: list[int] | None = None,
    ) -> None:
        super().__init__(nodes)
        self.respond = respond
        self.per_pull = per_pull
        self.order = order
        self._ready: list[Message] = []

    def _answer(self, m: Message) -> None:
        answer = self.respond(m)
        if answer is not None:
            self._ready.append(answer)

    def _pushed_all(self) -> None:
        if self.order is not None:
            rank = {node: i for i, node in enumerate(self.order)}
            dst = {m.metadata.message_id: m.metadata.dst_node_id for m in self.pushed}
            self._ready.sort(key=lambda r: rank[dst[r.metadata.reply_to_message_id]])

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        wanted = set(message_ids)
        out = [r for r in self._ready if r.metadata.reply_to_message_id in wanted]
        out = out[: self.per_pull]
        self._ready = [r for r in self._ready if all(r is not o for o in out)]
        return out
