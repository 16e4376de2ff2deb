"""An in-process Grid for tests: each pushed message is answered by ``respond`` (None: the
node never answers), and replies come back ``per_pull`` at a time, in push order, or in
the order ``order`` gives (node ids)."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from flwr.app import Message, RecordDict
from flwr.serverapp import Grid
from flwr.supercore.run import Run

Respond = Callable[[Message], Message | None]


class ScriptedGrid(Grid):
    def __init__(
        self, nodes: Iterable[int], respond: Respond, *, per_pull: int = 1,
        order: list[int] | None = None,
    ) -> None:
        self.nodes = list(nodes)
        self.respond = respond
        self.per_pull = per_pull
        self.order = order
        self.pushed: list[Message] = []
        self._ready: list[Message] = []
        self._count = 0

    def set_run(self, run: Run) -> None: ...

    @property
    def run(self) -> Run:
        raise NotImplementedError

    def create_message(self, content: RecordDict, message_type: str, dst_node_id: int,
                       group_id: str, ttl: float | None = None) -> Message:
        return Message(content, dst_node_id=dst_node_id, message_type=message_type)

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
                self._ready.append(answer)
        if self.order is not None:
            rank = {node: i for i, node in enumerate(self.order)}
            dst = {m.metadata.message_id: m.metadata.dst_node_id for m in self.pushed}
            self._ready.sort(key=lambda r: rank[dst[r.metadata.reply_to_message_id]])
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        wanted = set(message_ids)
        out = [r for r in self._ready if r.metadata.reply_to_message_id in wanted]
        out = out[: self.per_pull]
        self._ready = [r for r in self._ready if all(r is not o for o in out)]
        return out

    def send_and_receive(self, messages: Iterable[Message], *,
                         timeout: float | None = None) -> Iterable[Message]:
        raise NotImplementedError("tests drive the StreamingGrid's exchange")
