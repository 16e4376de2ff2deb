"""StreamingGrid: replies in arrival order, each attributed to the node it was sent to,
the round timeout, and the exchange's own timing."""

from __future__ import annotations

import gc
import weakref

from flwr.app import Error, Message, MessageType, MetricRecord, RecordDict

from coordinator.grid import StreamingGrid
from tests.utils.grids import ScriptedGrid


def _requests(grid: ScriptedGrid, nodes: list[int]) -> list[Message]:
    return [Message(RecordDict(), dst_node_id=n, message_type=MessageType.TRAIN) for n in nodes]


def _ok(msg: Message) -> Message:
    content = RecordDict({"metrics": MetricRecord({"node": float(msg.metadata.dst_node_id)})})
    return Message(content, reply_to=msg)


def test_replies_stream_in_arrival_order_each_with_its_node() -> None:
    inner = ScriptedGrid([1, 2, 3, 4], _ok, order=[3, 1, 4, 2])
    grid = StreamingGrid(inner, min_interval=0.0)
    ex = grid.exchange(_requests(inner, [1, 2, 3, 4]), timeout=5)
    got = [(r.node_id, r.message.content["metrics"]["node"]) for r in ex]
    assert got == [("3", 3.0), ("1", 1.0), ("4", 4.0), ("2", 2.0)]
    assert ex.timing.kind == MessageType.TRAIN
    assert ex.timing.replies == ex.timing.expected == 4 and not ex.timing.timed_out


def test_an_error_reply_is_attributed_to_the_node_it_was_sent_to() -> None:
    def crash_on_7(msg: Message) -> Message:
        if msg.metadata.dst_node_id != 7:
            return _ok(msg)
        reply = Message(Error(code=0, reason="ClientApp crashed"), reply_to=msg)
        reply.metadata.__dict__["_src_node_id"] = 1  # what Flower may stamp on its own replies
        return reply

    inner = ScriptedGrid([5, 7], crash_on_7)
    replies = list(StreamingGrid(inner).exchange(_requests(inner, [5, 7]), timeout=5))
    error = next(r for r in replies if r.message.has_error())
    assert error.node_id == "7" and error.message.metadata.src_node_id == 1


def test_timeout_ends_the_exchange_and_names_the_missing_nodes() -> None:
    silent = {12, 14}
    inner = ScriptedGrid(
        [11, 12, 13, 14], lambda m: None if m.metadata.dst_node_id in silent else _ok(m))
    grid = StreamingGrid(inner, min_interval=0.001, max_interval=0.005)
    ex = grid.exchange(_requests(inner, [11, 12, 13, 14]), timeout=0.05)
    assert sorted(r.node_id for r in ex) == ["11", "13"]
    assert ex.timing.timed_out and ex.timing.missing == ("12", "14")
    assert ex.timing.replies == 2 and ex.timing.expected == 4
    assert ex.timing.wait_s > 0 and ex.timing.send_s >= 0


def test_no_messages_no_push() -> None:
    inner = ScriptedGrid([1], _ok)
    ex = StreamingGrid(inner).exchange([], timeout=1)
    assert list(ex) == [] and inner.pushed == [] and ex.timing.expected == 0


def test_streaming_grid_does_not_keep_replies_it_handed_over() -> None:
    inner = ScriptedGrid([1, 2, 3, 4], _ok, per_pull=4)  # every reply arrives in one pull
    grid = StreamingGrid(inner)
    handed: list[weakref.ref] = []
    for r in grid.exchange(_requests(inner, [1, 2, 3, 4]), timeout=5):
        handed.append(weakref.ref(r.message))
        del r
        gc.collect()
        assert all(h() is None for h in handed)
    assert len(handed) == 4
