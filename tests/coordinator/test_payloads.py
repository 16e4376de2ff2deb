"""Tensors out of Flower's .npy payloads (one Array per tensor, as Flower writes them) and
either format read by ``record_tensors``."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord

from client.packed import packed_record
from coordinator.payloads import (
    _NPY_HEADER,
    PayloadError,
    _header,
    record_tensors,
    tensor_view,
)


def npy(t: torch.Tensor) -> Array:
    """An Array as Flower writes it (np.save's bytes)."""
    return Array(t.numpy())


@pytest.mark.parametrize("shape", [(), (4,), (2, 3, 4), (0, 3)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.int64])
def test_numpy_save_bytes_are_read_as_views(dtype: torch.dtype, shape) -> None:
    t = (torch.arange(int(np.prod(shape))) - 5).reshape(shape).to(dtype)
    buf = io.BytesIO()
    np.save(buf, t.numpy(), allow_pickle=False)
    array = Array(dtype=str(t.numpy().dtype), shape=shape, stype="numpy.ndarray",
                  data=buf.getvalue())
    assert torch.equal(tensor_view(array, "t"), t) and tensor_view(array, "t").dtype == dtype


def test_view_round_trip_and_no_copy() -> None:
    t = torch.randn(5, 7)
    record = ArrayRecord({"w": npy(t)})
    view = tensor_view(record["w"], "w")
    assert torch.equal(view, t)
    base = np.frombuffer(record["w"].data, dtype=np.uint8).ctypes.data
    assert base <= view.untyped_storage().data_ptr() < base + len(record["w"].data)


def test_malformed_payloads_are_named() -> None:
    good = npy(torch.ones(4))
    with pytest.raises(PayloadError, match="'x': payload is not .npy"):
        tensor_view(Array(dtype="float32", shape=(4,), stype="numpy.ndarray", data=b"junk"), "x")
    truncated = Array(dtype="float32", shape=(4,), stype="numpy.ndarray", data=good.data[:-4])
    with pytest.raises(PayloadError, match="holds 12 bytes, shape \\(4,\\) needs 16"):
        tensor_view(truncated, "x")


@pytest.mark.parametrize("shape", [(), (7,), (3, 5), (2, 0, 4)])
def test_np_save_headers_take_the_fast_path(shape) -> None:
    """Headers np.save writes are parsed by the regex, not the literal parser."""
    data = npy(torch.zeros(shape)).data
    text = data[10 : 10 + int.from_bytes(data[8:10], "little")].decode("latin1")
    assert _NPY_HEADER.match(text)
    assert _header(text) == ("<f4", False, shape)


def test_record_tensors_reads_both_formats_alike() -> None:
    params = {"w": torch.randn(3, 4), "b": torch.randn(4)}
    per_tensor = record_tensors(ArrayRecord({k: npy(t) for k, t in params.items()}))
    packed = record_tensors(packed_record(params))
    for k, t in params.items():
        assert torch.equal(per_tensor[k], t) and torch.equal(packed[k], t)
    broken = packed_record(params)
    broken["packed"].data = broken["packed"].data[:-4]
    with pytest.raises(PayloadError, match="its manifest accounts for"):
        record_tensors(broken)
