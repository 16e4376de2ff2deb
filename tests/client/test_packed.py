"""The packed payload: every tensor of a record in one Flower Array, read back as views."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MessageType, RecordDict
from flwr.common.constant import FLWR_PRIVATE_MAX_ARRAY_CHUNK_SIZE
from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects
from flwr.supercore.inflatable.inflatable_utils import inflate_object_from_contents
from flwr.supercore.task_identity import TaskIdentity
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from client.packed import (
    ALIGN,
    DTYPES,
    MAGIC,
    PACKED_NAME,
    PACKED_STYPE,
    PackedError,
    is_packed,
    pack,
    packed_record,
    unpack,
)

PARAMS = {
    "w": torch.randn(5, 7),
    "half": torch.randn(3).half(),
    "brain": torch.randn(2, 3).bfloat16(),
    "double": torch.randn(4, dtype=torch.float64),
    "count": torch.tensor(7),  # 0-d
    "mask": torch.tensor([True, False, True]),
    "steps": torch.arange(5, dtype=torch.int64),
    "empty": torch.zeros(0, 4),
}


def test_round_trip_keeps_names_dtypes_shapes_and_values() -> None:
    out = unpack(pack(PARAMS))
    assert list(out) == list(PARAMS)
    for name, t in PARAMS.items():
        assert out[name].dtype == t.dtype and out[name].shape == t.shape, name
        assert torch.equal(out[name], t), name


def test_views_share_the_payload_bytes_and_are_aligned() -> None:
    array = pack(PARAMS)
    base = np.frombuffer(array.data, dtype=np.uint8).ctypes.data
    for name, view in unpack(array).items():
        if view.numel():
            ptr = view.data_ptr()
            assert base <= ptr < base + len(array.data), name  # no copy
            assert (ptr - base) % ALIGN == 0, name


def test_non_contiguous_and_grad_tensors_are_written_as_their_values() -> None:
    w = torch.randn(4, 6, requires_grad=True)
    out = unpack(pack({"t": w.t(), "s": w[:, ::2]}))
    assert torch.equal(out["t"], w.detach().t()) and torch.equal(out["s"], w.detach()[:, ::2])


def test_is_packed_tells_the_two_formats_apart() -> None:
    assert is_packed(packed_record(PARAMS))
    assert not is_packed(ArrayRecord({"w": torch.ones(2)}))
    assert not is_packed(ArrayRecord({PACKED_NAME: torch.ones(2)}))  # a tensor named so
    assert packed_record(PARAMS)[PACKED_NAME].stype == PACKED_STYPE


def test_an_unpackable_dtype_is_named() -> None:
    with pytest.raises(PackedError, match="'z': dtype torch.complex64 cannot be packed"):
        pack({"z": torch.zeros(2, dtype=torch.complex64)})


def _blob(rows: list[dict], data: bytes = b"", *, header: bytes | None = None) -> Array:
    """A packed Array with this manifest and data section, as a foreign writer made it."""
    head = json.dumps({"tensors": rows}).encode() if header is None else header
    start = -(-(8 + len(head)) // ALIGN) * ALIGN
    blob = MAGIC + len(head).to_bytes(4, "little") + head + bytes(start - 8 - len(head)) + data
    return Array(dtype="uint8", shape=(len(blob),), stype=PACKED_STYPE, data=blob)


def _row(name: str = "w", dtype: str = "float32", shape=(2,), offset: int = 0) -> dict:
    return {"name": name, "dtype": dtype, "shape": list(shape), "offset": offset}


@pytest.mark.parametrize(
    ("array", "reason"),
    [
        (Array(dtype="uint8", shape=(4,), stype=PACKED_STYPE, data=b"junk"), "marker"),
        (Array(dtype="uint8", shape=(9,), stype=PACKED_STYPE,
               data=MAGIC + (999).to_bytes(4, "little") + b"{"), "runs past its end"),
        (_blob([], header=b"{not json"), "manifest is not JSON"),
        (_blob([], header=b"[1, 2]"), "no 'tensors' list"),
        (_blob([{"dtype": "float32"}]), "entry 0 has no tensor name"),
        (_blob([_row(dtype="complex64")], bytes(8)), "'w': unknown dtype 'complex64'"),
        (_blob([_row(shape=(2, -1))], bytes(8)), "'w': shape [2, -1] is not a list"),
        (_blob([_row(offset=2)], bytes(16)), "'w': offset 2 is not an integer >= 0 aligned"),
        (_blob([_row(), _row()], bytes(8)), "names a tensor twice"),
        (_blob([_row("a", shape=(4,)), _row("b", offset=8)], bytes(16)),
         "'b' at offset 8 overlaps the tensor before it (which ends at 16)"),
        (_blob([_row(shape=(4,))], bytes(8)), "its manifest accounts for"),  # short
        (_blob([_row()], bytes(12)), "its manifest accounts for"),  # trailing bytes
        (_blob([_row(offset=64)], bytes(8)), "its manifest accounts for"),  # out of range
    ],
)
def test_malformed_payloads_are_refused_with_what_is_wrong(array: Array, reason: str) -> None:
    with pytest.raises(PackedError) as exc:
        unpack(array)
    assert reason in str(exc.value)


def test_a_size_mismatch_gives_both_sizes() -> None:
    array = _blob([_row(shape=(4,))], bytes(8))  # 16 bytes declared, 8 sent
    with pytest.raises(PackedError) as exc:
        unpack(array)
    n = len(array.data)
    assert f"holds {n} bytes, its manifest accounts for {n + 8}" in str(exc.value)


def test_a_foreign_writer_with_its_own_layout_is_read() -> None:
    """Any aligned, non-overlapping layout is accepted, in any order."""
    a, b = np.arange(4, dtype=np.float32), np.arange(3, dtype=np.int64)
    array = _blob([_row("a", shape=(4,), offset=24), _row("b", "int64", (3,), 0)],
                  b.tobytes() + a.tobytes())
    out = unpack(array)
    assert out["a"].tolist() == a.tolist() and out["b"].tolist() == b.tolist()
    # an empty tensor at a non-empty one's offset overlaps nothing, listed before or after
    for rows in ([_row("a", shape=(2,)), _row("e", shape=(0,))],
                 [_row("e", shape=(0,)), _row("a", shape=(2,))]):
        assert unpack(_blob(rows, a[:2].tobytes()))["e"].shape == (0,)


def test_a_payload_over_flowers_chunk_size_survives_flowers_serialisation() -> None:
    """Flower cuts a large Array into chunks; the message's objects inflate back into
    the same payload, which unpacks to the same tensors."""
    TaskIdentity.run_id = TaskIdentity.node_id = TaskIdentity.task_id = 1
    n = FLWR_PRIVATE_MAX_ARRAY_CHUNK_SIZE // 4 + 1000  # floats: just over one chunk
    params = {"big": torch.randn(n), "small": torch.randn(3).bfloat16()}
    msg = Message(RecordDict({"arrays": packed_record(params), "config": ConfigRecord({})}),
                  dst_node_id=1, message_type=MessageType.TRAIN)
    objects = get_all_nested_objects(msg)
    chunks = [o for o in objects.values() if type(o).__name__ == "ArrayChunk"]
    assert len(chunks) == 2
    contents = {oid: o.deflate() for oid, o in objects.items()}
    back = inflate_object_from_contents(msg.object_id, contents)
    out = unpack(back.content["arrays"][PACKED_NAME])
    assert torch.equal(out["big"], params["big"]) and torch.equal(out["small"], params["small"])


def test_a_record_of_any_size_is_six_objects_in_a_message() -> None:
    """What packing is for: the message's object count does not grow with the tensors."""
    TaskIdentity.run_id = TaskIdentity.node_id = TaskIdentity.task_id = 1
    many = {f"t{i}": torch.full((3,), float(i)) for i in range(20)}  # distinct: no dedup

    def count(record: ArrayRecord) -> int:
        msg = Message(RecordDict({"arrays": record, "config": ConfigRecord({})}),
                      dst_node_id=1, message_type=MessageType.TRAIN)
        return len(get_all_nested_objects(msg))

    assert count(packed_record(many)) == 6
    assert count(ArrayRecord(many)) == 4 + 2 * len(many)


_ROWS = st.lists(st.fixed_dictionaries({
    "name": st.one_of(st.sampled_from(["a", "b"]), st.integers(), st.none()),
    "dtype": st.one_of(st.sampled_from(["float32", "bfloat16", "int64", "bool", "complex64"]),
                       st.integers(), st.lists(st.integers(), max_size=1), st.none()),
    "shape": st.one_of(st.lists(st.integers(-2, 5), max_size=3), st.text(max_size=2)),
    "offset": st.one_of(st.integers(-8, 96), st.floats(0, 8), st.booleans()),
}), max_size=3)


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(rows=_ROWS, data=st.binary(max_size=160), mangle=st.integers(0, 20))
def test_any_payload_unpacks_to_its_manifest_or_is_refused(rows, data, mangle) -> None:
    """Whatever a writer puts in the manifest, the bytes or the length prefix, unpack
    returns exactly the declared tensors inside the payload, or raises PackedError."""
    array = _blob(rows, data)
    if mangle:  # cut the payload short: the manifest may then run past its end
        array = Array(dtype="uint8", shape=(1,), stype=PACKED_STYPE,
                      data=array.data[: len(array.data) - mangle])
    try:
        out = unpack(array)
    except PackedError as exc:
        assert str(exc)
        return
    assert list(out) == [r["name"] for r in rows]
    for r in rows:
        t = out[r["name"]]
        assert list(t.shape) == r["shape"] and t.dtype == DTYPES[r["dtype"]]
