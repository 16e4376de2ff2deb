"""Tensors in and out of Flower's ``Array`` payloads (.npy bytes), with one copy at most.

Flower's ``Array.numpy()`` parses each payload through a stream, and ``Array(ndarray)``
writes through a growing ``BytesIO`` and copies out of it (PERF-ANCHORS.md). Reading, a
tensor here is a read-only torch view of the ``Array.data`` bytes (the header is parsed
by hand, the data never copied); writing, the bytes are built in one copy.
"""

from __future__ import annotations

import ast
import io
import math
import warnings

import numpy as np
import torch
from flwr.app import Array, ArrayRecord

_TORCH_DTYPES = {
    "<f4": torch.float32, "<f8": torch.float64, "<f2": torch.float16,
    "<i8": torch.int64, "<i4": torch.int32, "|u1": torch.uint8, "|i1": torch.int8,
    "|b1": torch.bool,
}


class PayloadError(ValueError):
    """An Array whose bytes are not a .npy payload this coordinator can read."""


def tensor_view(array: Array, name: str) -> torch.Tensor:
    """A zero-copy, read-only torch view of an ``Array``'s .npy payload."""
    data = array.data
    if data[:6] != b"\x93NUMPY":
        raise PayloadError(f"tensor {name!r}: payload is not .npy")
    major = data[6]
    if major == 1:
        start, hlen = 10, int.from_bytes(data[8:10], "little")
    elif major in (2, 3):
        start, hlen = 12, int.from_bytes(data[8:12], "little")
    else:
        raise PayloadError(f"tensor {name!r}: unsupported .npy version {major}")
    try:
        header = ast.literal_eval(data[start : start + hlen].decode("latin1"))
        descr, fortran, shape = header["descr"], header["fortran_order"], tuple(header["shape"])
    except (ValueError, SyntaxError, KeyError, TypeError) as exc:
        raise PayloadError(f"tensor {name!r}: malformed .npy header ({exc})") from None
    dtype = _TORCH_DTYPES.get(descr)
    if dtype is None:
        raise PayloadError(f"tensor {name!r}: unsupported dtype {descr!r}")
    if fortran and len(shape) > 1:
        raise PayloadError(f"tensor {name!r}: Fortran-ordered payload")
    count = math.prod(shape)
    offset = start + hlen
    if len(data) - offset != count * dtype.itemsize:
        raise PayloadError(
            f"tensor {name!r}: payload holds {len(data) - offset} bytes, shape {shape} "
            f"needs {count * dtype.itemsize}"
        )
    if count == 0:
        return torch.empty(shape, dtype=dtype)
    with warnings.catch_warnings():
        # bytes are immutable: the view is only ever read.
        warnings.simplefilter("ignore", UserWarning)
        return torch.frombuffer(data, dtype=dtype, count=count, offset=offset).view(shape)


def tensor_array(tensor: torch.Tensor) -> Array:
    """An ``Array`` holding ``tensor`` as .npy bytes, byte-identical to ``np.save``."""
    a = np.ascontiguousarray(tensor.detach().cpu().numpy())
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, np.lib.format.header_data_from_array_1_0(a))
    data = b"".join((header.getvalue(), memoryview(a).cast("B")))  # the one copy
    return Array(dtype=str(a.dtype), shape=tuple(a.shape), stype="numpy.ndarray", data=data)


def params_record(params: dict[str, torch.Tensor]) -> ArrayRecord:
    return ArrayRecord({k: tensor_array(t) for k, t in params.items()})
