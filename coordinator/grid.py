"""A Grid that hands replies over as they arrive, each with the node it was sent to.

Flower's ``send_and_receive`` returns only when every reply is in, polling every
``pull_interval`` (0.1 s in simulation, more in deployment): a round costs at least that
whatever the clients do, and the merge cannot start before the slowest client is done.
``StreamingGrid.exchange`` pushes at once and returns an ``Exchange``: an iterator that
pulls with a short, backing-off interval and yields each reply as soon as it is there
(so the merge streams replies while stragglers still train), together with the
exchange's own timing.

Each reply is attributed to the node its request was SENT to (the message id -> node
map of the push), not to the reply's ``src_node_id``: Flower fills that field of an
error reply it makes itself (a ClientApp that crashed, a node that went away) with
whatever identity is at hand, not the node's.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from flwr.app import Message, RecordDict
from flwr.serverapp import Grid
from flwr.supercore.run import Run


@dataclass
class ExchangeTiming:
    """Seconds of one exchange: pushing the messages, and waiting for replies (time
    inside the pull loop, not time the consumer spent on a reply). Filled in while the
    exchange is iterated; final once it is exhausted."""

    kind: str = ""  # the message type
    send_s: float = 0.0
    wait_s: float = 0.0
    replies: int = 0
    expected: int = 0
    timed_out: bool = False
    missing: tuple[str, ...] = ()  # nodes whose reply had not come when it timed out


@dataclass(frozen=True)
class Reply:
    """A reply and the node its request was sent to."""

    node_id: str
    message: Message


class Exchange:
    """The replies of one push, in arrival order (iterate once), and its timing."""

    def __init__(self, replies: Iterator[Reply], timing: ExchangeTiming) -> None:
        self._replies = replies
        self.timing = timing

    def __iter__(self) -> Iterator[Reply]:
        return self._replies


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

    def exchange(self, messages: Iterable[Message], *, timeout: float | None = None) -> Exchange:
        """Push ``messages`` now; the returned Exchange yields their replies as they come
        and stops at ``timeout`` seconds (its timing then names the missing nodes)."""
        messages = list(messages)
        timing = ExchangeTiming(kind=messages[0].metadata.message_type if messages else "")
        if not messages:
            return Exchange(iter(()), timing)
        t0 = time.perf_counter()
        pushed = list(self.inner.push_messages(messages))
        timing.send_s = time.perf_counter() - t0
        timing.expected = len(pushed)
        nodes = {mid: str(m.metadata.dst_node_id)
                 for mid, m in zip(pushed, messages, strict=True)}
        return Exchange(self._replies(nodes, timeout, timing), timing)

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterator[Message]:
        """Flower's Grid call, streamed: the replies alone, as they arrive."""
        return (r.message for r in self.exchange(messages, timeout=timeout))

    def _replies(
        self, nodes: dict[str, str], timeout: float | None, timing: ExchangeTiming
    ) -> Iterator[Reply]:
        ids = set(nodes)
        deadline = None if timeout is None else time.monotonic() + timeout
        interval = self.min_interval
        while ids:
            t0 = time.perf_counter()
            got = [m for m in self.inner.pull_messages(ids)
                   if m.metadata.reply_to_message_id in ids]
            ids.difference_update(m.metadata.reply_to_message_id for m in got)
            if not got:
                if deadline is not None and time.monotonic() >= deadline:
                    timing.timed_out = True
                    timing.missing = tuple(sorted(nodes[i] for i in ids))
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
                yield Reply(nodes[got[-1].metadata.reply_to_message_id], got.pop())
