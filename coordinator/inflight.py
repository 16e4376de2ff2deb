"""The train messages of the asynchronous loop in flight on Flower's grid: pushed with
``push_messages``, their replies pulled with ``pull_messages`` (a short, backing-off poll,
as the streaming grid does), each message tracked by a ``Ticket`` (its node and the
model version it carries)."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass

from flwr.app import ConfigRecord, Message, MessageType, RecordDict
from flwr.serverapp import Grid

from aggregation import ServerState
from coordinator.payloads import packed_record


@dataclass(frozen=True)
class Ticket:
    """A train message in flight: to ``node``, carrying the theta of version ``base``."""

    message_id: str
    node: int
    base: int
    sent_at: float = 0.0  # time.monotonic() at the push; 0 for one re-attached on resume
    occupies_node: bool = True  # False for one re-attached on resume: the node got new work

    @property
    def update_id(self) -> str:
        return f"{self.node}:{self.base}:{self.message_id}"

    def as_json(self) -> list[object]:
        return [self.message_id, str(self.node), self.base]

    @classmethod
    def from_json(cls, row: list[object]) -> Ticket:
        message_id, node, base = row
        return cls(str(message_id), int(str(node)), int(str(base)), occupies_node=False)


class InFlight:
    """The messages in flight and the replies pulled but not yet taken, on Flower's
    grid (push_messages / pull_messages with a short, backing-off poll)."""

    def __init__(self, grid: Grid, train_config: ConfigRecord, *, min_interval: float,
                 max_interval: float) -> None:
        self.grid = grid
        self.train_config = train_config
        self.min_interval, self.max_interval = min_interval, max_interval
        self.tickets: dict[str, Ticket] = {}
        self.ready: deque[tuple[Ticket, Message]] = deque()
        self.dispatched = 0  # train messages sent by this start of the loop
        self.send_s = self.wait_s = 0.0
        self._record: tuple[int, object] | None = None  # (version, its ArrayRecord)

    def send(self, nodes: Iterable[int], state: ServerState) -> None:
        """Each of ``nodes`` is sent theta of ``state`` (its version: state.round)."""
        nodes = list(nodes)
        if not nodes:
            return
        t0 = time.perf_counter()
        if self._record is None or self._record[0] != state.round:  # one record a version
            self._record = (state.round, packed_record(state.params))
        messages = []
        for node in nodes:
            self.dispatched += 1
            config = ConfigRecord({**self.train_config, "base-version": state.round,
                                   # seeds the client's local SGD: new for each dispatch
                                   "server-round": state.round * 1_000_003 + self.dispatched})
            content = RecordDict({"arrays": self._record[1], "config": config})
            messages.append(self.grid.create_message(content, MessageType.TRAIN, node,
                                                     str(state.round)))
        ids = list(self.grid.push_messages(messages))
        now = time.monotonic()
        for mid, node in zip(ids, nodes, strict=True):
            self.tickets[mid] = Ticket(mid, node, state.round, now)
        self.send_s += time.perf_counter() - t0

    def next_reply(self, deadline: float) -> tuple[Ticket, Message] | None:
        """The next reply (pulling until one is there), or None at ``deadline``."""
        interval = self.min_interval
        while not self.ready:
            t0 = time.perf_counter()
            ids = set(self.tickets)
            got = [m for m in self.grid.pull_messages(ids)
                   if m.metadata.reply_to_message_id in ids] if ids else []
            for m in got:
                self.ready.append((self.tickets.pop(m.metadata.reply_to_message_id), m))
            if not got:
                if time.monotonic() >= deadline:
                    self.wait_s += time.perf_counter() - t0
                    return None
                time.sleep(interval)
                interval = min(interval * 2, self.max_interval)
            self.wait_s += time.perf_counter() - t0
        return self.ready.popleft()

    def expired(self, timeout: float) -> list[Ticket]:
        """The tickets sent more than ``timeout`` s ago, given up (no longer pulled)."""
        now = time.monotonic()
        gone = [t for t in self.tickets.values()
                if t.occupies_node and now - t.sent_at > timeout]
        for t in gone:
            del self.tickets[t.message_id]
        return gone

    def in_flight(self) -> list[list[object]]:
        """Every message sent and not yet taken: at the grid, or pulled and waiting."""
        return [t.as_json() for t in (*self.tickets.values(), *(t for t, _ in self.ready))]

    def take_timings(self) -> tuple[float, float]:
        out = (self.send_s, self.wait_s)
        self.send_s = self.wait_s = 0.0
        return out
