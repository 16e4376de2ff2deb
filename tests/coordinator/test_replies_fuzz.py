"""Random reply Messages (record layouts, dtypes, shapes, raw and crafted .npy bytes,
huge, negative and NaN metrics, extra and missing keys) through the reply decoder, the
merge and the round's records: each reply is accepted or rejected with a
reason, nothing else is raised, and rejected replies leave the merged model as it would
be without them."""

from __future__ import annotations

import math

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from coordinator.evaluation import federated_records
from coordinator.replies import UpdateLimits, UpdateRejected, decode_reply, reply_metrics
from coordinator.rounds import update_record
from tests.utils.replies import _stamped, reply
from tests.utils.strategies import make_strategy

THETA = {"w": np.zeros((3, 2), np.float32), "b": np.zeros(2, np.float32)}
TEMPLATE = {k: torch.from_numpy(v) for k, v in THETA.items()}
LIMITS = UpdateLimits(max_examples=10_000)
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))

names = st.sampled_from(["w", "b", "w", "b", "x", "", "w.extra", "fc.weight"])
shapes = st.one_of(st.sampled_from([(3, 2), (2,), (2, 3), (6,), (), (0,), (3, 2, 1)]),
                   hnp.array_shapes(min_dims=0, max_dims=3, max_side=4))
dtypes = st.sampled_from([np.float32, np.float32, np.float64, np.float16, np.int64, np.int32,
                          np.uint8, np.int8, np.bool_, np.complex64, np.dtype(">f4")])


@st.composite
def ndarrays(draw) -> np.ndarray:
    return draw(hnp.arrays(draw(dtypes), draw(shapes)))


@st.composite
def npy_headers(draw) -> bytes:
    """A .npy header of random content, then a payload of about the size it claims."""
    descr = draw(st.one_of(st.sampled_from(["<f4", "<f8", ">f4", "<c8", "|O", "<U3", "<f4"]),
                           st.text(max_size=4), st.integers(), st.lists(st.integers())))
    shape = draw(st.one_of(shapes, st.tuples(st.floats(allow_nan=True)),
                           st.tuples(st.integers(-(2**70), 2**70)), st.booleans(),
                           st.text(max_size=3)))
    text = f"{{'descr': {descr!r}, 'fortran_order': {draw(st.booleans())!r}, " \
           f"'shape': {shape!r}, }}"
    if draw(st.booleans()):
        text = draw(st.text(max_size=40))
    header = text.encode("latin1", "replace")
    version = draw(st.sampled_from([1, 1, 2, 3, 0, 9]))
    size = len(header).to_bytes(2 if version == 1 else 4, "little")
    body = b"\0" * draw(st.sampled_from([0, 4, 8, 24, 48, 7]))
    return b"\x93NUMPY" + bytes([version, 0]) + size + header + body


arrays = st.one_of(
    ndarrays().map(Array),
    st.builds(lambda d: Array(dtype="float32", shape=(3, 2), stype="numpy.ndarray", data=d),
              st.one_of(st.binary(max_size=40), st.binary(max_size=8).map(b"\x93NUMPY".__add__),
                        npy_headers())),
)
numbers = st.one_of(
    st.sampled_from([math.nan, math.inf, -math.inf, 0, -1, 0.5, 1e308, 2**63 - 1, -(2**63), 5]),
    st.floats(allow_nan=True, allow_infinity=True), st.integers(-(2**63), 2**63 - 1))
metric_values = st.one_of(numbers, st.lists(st.integers(-(2**63), 2**63 - 1), max_size=3),
                          st.lists(st.floats(allow_nan=True), max_size=3))
metric_keys = ["num-examples", "partition-id", "train-loss", "train-seconds", "eval-acc",
               "eval-loss", "personal-acc", "junk"]
config_values = st.one_of(st.lists(names, max_size=3), st.text(max_size=4), st.integers(),
                          st.binary(max_size=4), st.lists(st.binary(max_size=2), max_size=2),
                          st.booleans())
array_records = st.dictionaries(names, arrays, max_size=4).map(ArrayRecord)
metric_records = st.fixed_dictionaries(
    {}, optional=dict.fromkeys(metric_keys, metric_values)).map(MetricRecord)
config_records = st.fixed_dictionaries(
    {}, optional=dict.fromkeys(["tensors", "other"], config_values)).map(ConfigRecord)
records = st.one_of(array_records, metric_records, config_records)
record_keys = st.sampled_from(["arrays", "metrics", "fisher", "manifest", "extra"])
layouts = st.fixed_dictionaries({}, optional={  # mostly the kind of record each key wants
    "arrays": st.one_of(array_records, records), "metrics": st.one_of(metric_records, records),
    "fisher": st.one_of(array_records, records), "manifest": st.one_of(config_records, records),
    "extra": records,
})


@st.composite
def fuzzed_replies(draw, node: int = 1) -> Message:
    """Any layout at all, or a good reply with one part replaced."""
    if draw(st.booleans()):
        content = RecordDict(draw(layouts))
        return _stamped(node, content)
    good = reply({k: np.ones_like(v) for k, v in THETA.items()}, examples=5, node=node)
    content = good.content
    content[draw(record_keys)] = draw(records)
    return _stamped(node, content)


@FUZZ
@given(msg=fuzzed_replies())
def test_every_reply_is_accepted_or_rejected_with_a_reason(msg: Message) -> None:
    try:
        d = decode_reply(msg, TEMPLATE, LIMITS)
    except UpdateRejected as exc:
        assert str(exc)
        return
    assert set(d.update.offset) <= set(TEMPLATE)
    for name, t in d.update.offset.items():
        assert (t.dtype, t.shape) == (TEMPLATE[name].dtype, TEMPLATE[name].shape)
    assert 0 < d.update.weight <= LIMITS.max_examples and math.isfinite(d.norm)


@FUZZ
@given(msg=fuzzed_replies())
def test_evaluate_replies_never_break_the_rounds_record(msg: Message) -> None:
    metrics = reply_metrics(msg)
    good = {"num-examples": 10.0, "eval-acc": 0.5, "eval-loss": 1.0}
    federated_records([good] + ([metrics] if metrics is not None else []))


def _theta(replies: list[Message]):
    strategy, rec = make_strategy(THETA)
    strategy.aggregate_train(1, replies)
    return strategy.state.params, rec.reports[0]


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(fuzzed=st.lists(st.integers(0, 2**32 - 1), min_size=1, max_size=3).flatmap(
    lambda seeds: st.tuples(*[fuzzed_replies(node=10 + i) for i in range(len(seeds))])))
def test_rejected_replies_leave_the_merged_model_unchanged(fuzzed: tuple[Message, ...]) -> None:
    rng = np.random.default_rng(0)
    good = [reply({k: rng.normal(size=v.shape).astype(np.float32) for k, v in THETA.items()},
                  examples=7 + i, node=1 + i) for i in range(2)]
    params, report = _theta([*good, *fuzzed])
    for outcome in report.clients:
        assert outcome.accepted or outcome.reason
        update_record(outcome)  # what the round's record stores of it
    accepted = {c.node_id for c in report.clients if c.accepted}
    kept = [m for m in fuzzed if str(m.metadata.src_node_id) in accepted]
    without, _ = _theta([*good, *kept])
    for k in THETA:
        torch.testing.assert_close(params[k], without[k], rtol=0, atol=0, equal_nan=True)


def _npy(header: str, body: bytes = b"") -> Array:
    raw = header.encode()
    data = b"\x93NUMPY\x01\x00" + len(raw).to_bytes(2, "little") + raw + body
    return Array(dtype="float32", shape=(3, 2), stype="numpy.ndarray", data=data)


ONES = {k: np.ones_like(v) for k, v in THETA.items()}
HEADER = "{'descr': '<f4', 'fortran_order': False, 'shape': %s, }"


def _with_w(array: Array) -> Message:
    msg = reply(ONES, examples=5)
    msg.content["arrays"]["w"] = array
    return msg


# What the fuzzers found, kept as plain cases.
FOUND = [
    (reply(ONES, examples=5), {"num-examples": [1, 2]}, "num-examples must be a number"),
    (_with_w(Array(dtype="float32", shape=(3, 2), stype="numpy.ndarray", data=b"\x93NUMPY")),
     {}, "not .npy"),
    (_with_w(_npy(HEADER % "(3.0, 2.0)", b"\0" * 24)), {}, "malformed .npy header"),
    (_with_w(_npy(HEADER % "(3, -2)", b"")), {}, "malformed .npy header"),
    (_with_w(_npy(HEADER.replace("'<f4'", "['<f4']") % "(3, 2)", b"\0" * 24)), {},
     "malformed .npy header"),
    (_with_w(_npy("(" * 200)), {}, "malformed .npy header"),
    (reply(ONES, examples=5), {"partition-id": math.nan}, "partition-id must be an integer"),
    (reply(ONES, examples=5), {"partition-id": math.inf}, "partition-id must be an integer"),
    (reply(ONES, examples=5), {"partition-id": 2.0**40}, "partition-id must be an integer"),
]


def test_what_the_fuzzers_found_is_rejected_with_a_reason() -> None:
    for msg, metrics, reason in FOUND:
        record = msg.content["metrics"]
        for k, v in metrics.items():
            record[k] = v
        try:
            decode_reply(msg, TEMPLATE, LIMITS)
        except UpdateRejected as exc:
            assert reason in str(exc), (reason, str(exc))
        else:
            raise AssertionError(f"accepted, expected {reason!r}")
        if "partition-id" in metrics:
            assert reply_metrics(msg) is None  # an evaluate reply like it is left out
