"""Tensors in and out of Flower's ``Array`` payloads, with one copy at most: the packed
payload (one Array for all tensors, ``client/packed.py``), which the coordinator sends and
our ClientApp replies with, and one .npy Array per tensor, which Flower's own strategies
and a ClientApp written against Flower's API use (``record_tensors`` reads both).

Flower's ``Array.numpy()`` parses each payload through a stream (docs/design.md, Flower
notes). Reading, a tensor here is a read-only torch view of the ``Array.data`` bytes (the
.npy header is parsed by hand, the data never copied); writing, the packed payload is
built in one copy.
"""

from __future__ import annotations

import ast
import functools
import math
import re
import warnings

import torch
from flwr.app import Array, ArrayRecord, Message

from client.packed import PACKED_NAME, PackedError, is_packed, unpack
from client.packed import packed_record as packed_record  # what the coordinator sends

_TORCH_DTYPES = {
    "<f4": torch.float32, "<f8": torch.float64, "<f2": torch.float16,
    "<i8": torch.int64, "<i4": torch.int32, "|u1": torch.uint8, "|i1": torch.int8,
    "|b1": torch.bool,
}


def ignore_readonly_view_warning() -> None:
    """Silence torch's warning that a view's bytes are not writable: the views of Flower's
    bytes are only ever read. Called by the entry points (the ServerApp, the simulation,
    the CLI), not at import: a process-wide filter is theirs to install. Filtered by its
    message rather than per call: a catch_warnings block around each of the K x tensors
    views cost more than the view itself."""
    warnings.filterwarnings(
        "ignore", message="The given buffer is not writable", category=UserWarning)


class PayloadError(ValueError):
    """An Array whose bytes are not a .npy payload this coordinator can read."""


def tensor_view(array: Array, name: str) -> torch.Tensor:
    """A zero-copy, read-only torch view of an ``Array``'s .npy payload."""
    data = array.data
    if len(data) < 10 or data[:6] != b"\x93NUMPY":
        raise PayloadError(f"tensor {name!r}: payload is not .npy")
    major = data[6]
    if major == 1:
        start, hlen = 10, int.from_bytes(data[8:10], "little")
    elif major in (2, 3):
        start, hlen = 12, int.from_bytes(data[8:12], "little")
    else:
        raise PayloadError(f"tensor {name!r}: unsupported .npy version {major}")
    try:
        descr, fortran, shape = _header(data[start : start + hlen].decode("latin1"))
    except (ValueError, SyntaxError, KeyError, TypeError, RecursionError, MemoryError) as exc:
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
    return torch.frombuffer(data, dtype=dtype, count=count, offset=offset).view(shape)


# What np.save writes; a header of any other form goes through ast.literal_eval.
_NPY_HEADER = re.compile(
    r"\{'descr': '([<>|=][a-z]\d+)', 'fortran_order': (True|False), "
    r"'shape': \((|\d+,|\d+(?:, \d+)+)\), \}\s*$"
)


@functools.lru_cache(maxsize=4096)
def _header(text: str) -> tuple[str, bool, tuple[int, ...]]:
    """(descr, fortran_order, shape) of a .npy header: a regex for np.save's own form, the
    literal parser else. Cached: every client sends the model's same few headers, and
    there are K x tensors of them a round."""
    m = _NPY_HEADER.match(text)
    if m:
        shape = tuple(int(d) for d in m.group(3).replace(",", " ").split())
        return m.group(1), m.group(2) == "True", shape
    header = ast.literal_eval(text)
    descr, fortran, shape = header["descr"], header["fortran_order"], header["shape"]
    if not isinstance(descr, str) or not isinstance(fortran, bool) or not (
        isinstance(shape, tuple)
        and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)
    ):
        raise ValueError(f"descr, fortran_order or shape of the wrong type: {text[:80]!r}")
    return descr, fortran, shape


def record_tensors(record: ArrayRecord) -> dict[str, torch.Tensor]:
    """The tensors of a record in either format, as read-only views of its bytes; raises
    ``PayloadError`` naming the tensor or the part of a packed payload that is wrong."""
    if is_packed(record):
        try:
            return unpack(record[PACKED_NAME])
        except PackedError as exc:
            raise PayloadError(str(exc)) from None
    return {name: tensor_view(array, name) for name, array in record.items()}


def payload_bytes(msg: Message) -> int:
    """The tensor bytes a message carries (every ArrayRecord's payloads, .npy headers or
    the packed manifest included): what crosses the wire for the model, per message. 0
    for an error reply."""
    if msg.has_error():
        return 0
    return sum(len(a.data) for rec in msg.content.array_records.values() for a in rec.values())
