"""A Grid that hands replies over as they arrive.

Flower's ``send_and_receive`` returns only when every reply is in, polling every
``pull_interval`` (0.1 s in simulation, more in deployment): a round costs at least that
whatever the clients do, and the merge cannot start before the slowest client is done.
``StreamingGrid`` wraps any Grid: it pushes at once and returns a generator that pulls
with a short, backing-off interval and yields each reply as soon as it is there, so the
strategy streams replies into the accumulator while stragglers still train.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from flwr.app import Message, MessageType, RecordDict
from flwr.serverapp import Grid
from flwr.supercore.run import Run


@dataclass
class ExchangeTiming:
    """Seconds of the latest exchange: pushing the messages, and waiting for replies
    (time inside the pull loop, not time the consumer spent on a reply)."""

    send_s: float = 0.0
    wait_s: float = 0.0
    replies: int = 0
    expected: int = 0
    timed_out: bool = False
    missing: tuple[str, ...] = ()  # nodes whose reply had not come when it timed out


class DelegatingGrid(Grid):
    """A Grid that forwards everything to ``inner``; subclasses change one part."""

    def __init__(self, inner: Grid) -> None:
        self.inner = inner

    def set_run(self, run: Run) -> None:
        self.inner.set_run(run)

    @property
    def run(self) -> Run:
        return self.inner.run

    def create_message(
        self, content: RecordDict, message_type: str, dst_node_id: int, group_id: str,
        ttl: float | None = None,
    ) -> Message:
        return self.inner.create_message(content, message_type, dst_node_id, group_id, ttl)

    def get_node_ids(self) -> Iterable[int]:
        return self.inner.get_node_ids()

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        return self.inner.push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return self.inner.pull_messages(message_ids)

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        return self.inner.send_and_receive(messages, timeout=timeout)


class StreamingGrid(DelegatingGrid):
    def __init__(self, inner: Grid, *, min_interval: float = 0.002, max_interval: float = 0.05):
        super().__init__(inner)
        self.min_interval = min_interval
        self.max_interval = max_interval
        self.timings: dict[str, ExchangeTiming] = {}  # the latest exchange per message type

    # --- the streaming exchange
    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterator[Message]:
        messages = list(messages)
        kind = messages[0].metadata.message_type if messages else ""
        t0 = time.perf_counter()
        pushed = list(self.inner.push_messages(messages))
        timing = ExchangeTiming(send_s=time.perf_counter() - t0, expected=len(pushed))
        self.timings[kind] = timing
        nodes = {i: str(m.metadata.dst_node_id) for i, m in zip(pushed, messages, strict=False)}
        return self._replies(set(pushed), timeout, timing, nodes)

    @property
    def last_train(self) -> ExchangeTiming:
        return self.timings.get(MessageType.TRAIN, ExchangeTiming())

    def _replies(
        self, ids: set[str], timeout: float | None, timing: ExchangeTiming,
        nodes: dict[str, str] | None = None,
    ) -> Iterator[Message]:
        deadline = None if timeout is None else time.monotonic() + timeout
        interval = self.min_interval
        while ids:
            t0 = time.perf_counter()
            got = list(self.inner.pull_messages(ids))
            ids.difference_update(m.metadata.reply_to_message_id for m in got)
            if not got:
                if deadline is not None and time.monotonic() >= deadline:
                    timing.timed_out = True
                    timing.missing = tuple(sorted((nodes or {}).get(i, i) for i in ids))
                    timing.wait_s += time.perf_counter() - t0
                    return
                time.sleep(interval)
                interval = min(interval * 2, self.max_interval)
            else:
                interval = self.min_interval
            timing.wait_s += time.perf_counter() - t0
            got.reverse()
            while got:  # pop, so a reply handed on is not also held here
                timing.replies += 1
                yield got.pop()
