"""Tensors in and out of Flower's .npy payloads."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from flwr.app import Array

from coordinator.payloads import (
    _NPY_HEADER,
    PayloadError,
    _header,
    params_record,
    tensor_array,
    tensor_view,
)


@pytest.mark.parametrize("shape", [(), (4,), (2, 3, 4), (0, 3)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.int64])
def test_tensor_array_is_byte_identical_to_numpy_save(dtype: torch.dtype, shape) -> None:
    t = (torch.arange(int(np.prod(shape))) - 5).reshape(shape).to(dtype)
    buf = io.BytesIO()
    np.save(buf, t.numpy(), allow_pickle=False)
    array = tensor_array(t)
    assert array.data == buf.getvalue()
    assert array.dtype == str(t.numpy().dtype) and array.shape == shape
    assert torch.equal(torch.from_numpy(array.numpy()), t)  # Flower reads it back
    assert torch.equal(tensor_view(array, "t"), t)  # and so do we


def test_view_round_trip_and_no_copy() -> None:
    t = torch.randn(5, 7)
    record = params_record({"w": t})
    view = tensor_view(record["w"], "w")
    assert torch.equal(view, t)
    base = np.frombuffer(record["w"].data, dtype=np.uint8).ctypes.data
    assert base <= view.untyped_storage().data_ptr() < base + len(record["w"].data)


def test_malformed_payloads_are_named() -> None:
    good = tensor_array(torch.ones(4))
    with pytest.raises(PayloadError, match="'x': payload is not .npy"):
        tensor_view(Array(dtype="float32", shape=(4,), stype="numpy.ndarray", data=b"junk"), "x")
    truncated = Array(dtype="float32", shape=(4,), stype="numpy.ndarray", data=good.data[:-4])
    with pytest.raises(PayloadError, match="holds 12 bytes, shape \\(4,\\) needs 16"):
        tensor_view(truncated, "x")


@pytest.mark.parametrize("shape", [(), (7,), (3, 5), (2, 0, 4)])
def test_np_save_headers_take_the_fast_path(shape) -> None:
    """Headers np.save writes are parsed by the regex, not the literal parser."""
    data = tensor_array(torch.zeros(shape)).data
    text = data[10 : 10 + int.from_bytes(data[8:10], "little")].decode("latin1")
    assert _NPY_HEADER.match(text)
    assert _header(text) == ("<f4", False, shape)
