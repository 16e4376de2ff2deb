"""A model's tensors as ONE Flower ``Array`` (the packed payload), written and read here only.

Flower 1.42 moves a message as a tree of objects, one request per object at every hop
(coordinator to SuperLink to SuperNode to the task, and back), and each ``Array`` is two
objects (itself and its chunk). Packed, a record of any number of tensors is one Array:
a round's messages move about half the objects (docs/deployment.md, section 7).

Layout of ``Array.data`` (``Array.stype`` is ``PACKED_STYPE``; dtype "uint8", shape (n,)):

    b"FMPK" | header length (uint32, little-endian) | header (JSON, UTF-8) | zero padding
    | the tensors' bytes, each at a multiple of ``ALIGN`` from the data start, back to back

The header is the manifest, ``{"tensors": [{"name", "dtype", "shape", "offset"}, ...]}``,
``offset`` counted from the data start (the header's end rounded up to ``ALIGN``), dtype
a torch dtype name ("float32", "bfloat16", ...): each tensor is read back as a zero-copy,
read-only view of the bytes, in its own dtype. It lives in this module because both sides
need it and the client knows no coordinator.
"""

from __future__ import annotations

import functools
import json
import math
import warnings
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from flwr.app import Array, ArrayRecord

PACKED_STYPE = "fedmerge.packed/1"
PACKED_NAME = "packed"  # the one Array of a packed ArrayRecord
MAGIC = b"FMPK"
ALIGN = 64  # bytes: any dtype's view is aligned, as in a .npy file
_PREFIX = len(MAGIC) + 4

DTYPES: dict[str, torch.dtype] = {
    str(d).removeprefix("torch."): d
    for d in (torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int64,
              torch.int32, torch.int16, torch.int8, torch.uint8, torch.bool)
}
_NAMES = {d: n for n, d in DTYPES.items()}


class PackedError(ValueError):
    """A packed payload this side cannot read; ``str(exc)`` says what is wrong."""


@dataclass(frozen=True)
class Slot:
    """Where one tensor's bytes are in a packed payload (offset from the data start)."""

    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]
    offset: int
    nbytes: int
    strides: tuple[int, ...]  # contiguous, in elements


def _aligned(n: int) -> int:
    return -(-n // ALIGN) * ALIGN


def pack(params: Mapping[str, torch.Tensor]) -> Array:
    """One Array holding ``params``' bytes, in their dtypes, with one copy (the join)."""
    tensors = {n: t.detach().cpu().contiguous() for n, t in params.items()}
    entries, at = [], 0
    for name, t in tensors.items():
        if t.dtype not in _NAMES:
            raise PackedError(f"tensor {name!r}: dtype {t.dtype} cannot be packed")
        entries.append({"name": name, "dtype": _NAMES[t.dtype], "shape": list(t.shape),
                        "offset": at})
        at = _aligned(at + t.numel() * t.element_size())
    header = json.dumps({"tensors": entries}, separators=(",", ":")).encode()
    start = _aligned(_PREFIX + len(header))
    parts: list[bytes | memoryview] = [
        MAGIC, len(header).to_bytes(4, "little"), header, bytes(start - _PREFIX - len(header))]
    end = 0
    for entry, t in zip(entries, tensors.values(), strict=True):
        parts.append(bytes(int(entry["offset"]) - end))  # the previous tensor's padding
        body = t.reshape(-1).view(torch.uint8).numpy()  # bytes of any dtype, bf16 too
        parts.append(memoryview(body))
        end = int(entry["offset"]) + body.nbytes
    data = b"".join(parts)
    return Array(dtype="uint8", shape=(len(data),), stype=PACKED_STYPE, data=data)


def packed_record(params: Mapping[str, torch.Tensor]) -> ArrayRecord:
    return ArrayRecord({PACKED_NAME: pack(params)})


def is_packed(record: ArrayRecord) -> bool:
    """Whether ``record`` is a packed payload (else: one Array per tensor)."""
    return len(record) == 1 and getattr(record.get(PACKED_NAME), "stype", None) == PACKED_STYPE


def unpack(array: Array) -> dict[str, torch.Tensor]:
    """The tensors of a packed payload, as read-only views of its bytes. Raises
    ``PackedError`` naming what is wrong: the manifest, a dtype, an offset or the size."""
    data = array.data
    if len(data) < _PREFIX or data[: len(MAGIC)] != MAGIC:
        raise PackedError("packed payload does not start with the packed format's marker")
    hlen = int.from_bytes(data[len(MAGIC) : _PREFIX], "little")
    if _PREFIX + hlen > len(data):
        raise PackedError(f"packed payload's manifest ({hlen} bytes) runs past its end "
                          f"({len(data)} bytes)")
    slots, end = _manifest(bytes(data[_PREFIX : _PREFIX + hlen]))
    start = _aligned(_PREFIX + hlen)
    if start + end != len(data):
        raise PackedError(f"packed payload holds {len(data)} bytes, its manifest accounts "
                          f"for {start + end}")
    bases = {}  # the whole payload seen as each dtype it holds: one view per tensor below
    with warnings.catch_warnings():  # only ever read: once per payload, not per tensor
        warnings.filterwarnings("ignore", message="The given buffer is not writable")
        for dtype in {s.dtype for s in slots}:
            bases[dtype] = torch.frombuffer(data, dtype=dtype,
                                            count=len(data) // dtype.itemsize)
    return {s.name: bases[s.dtype].as_strided(
        s.shape, s.strides, (start + s.offset) // s.dtype.itemsize) for s in slots}


@functools.lru_cache(maxsize=256)
def _manifest(header: bytes) -> tuple[tuple[Slot, ...], int]:
    """The checked slots of a manifest, and the data section's length. Cached: every
    client of a run sends the same manifest, and there are K of them a round."""
    try:
        doc = json.loads(header)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise PackedError(f"packed manifest is not JSON ({exc})") from None
    rows = doc.get("tensors") if isinstance(doc, dict) else None
    if not isinstance(rows, list):
        raise PackedError("packed manifest has no 'tensors' list")
    slots = tuple(_slot(i, row) for i, row in enumerate(rows))
    names = [s.name for s in slots]
    if len(set(names)) != len(names):
        raise PackedError(f"packed manifest names a tensor twice: {sorted(names)}")
    end = 0
    for s in sorted(slots, key=lambda s: (s.offset, s.nbytes)):  # an empty tensor first
        if s.offset < end:
            raise PackedError(f"packed tensor {s.name!r} at offset {s.offset} overlaps the "
                              f"tensor before it (which ends at {end})")
        end = s.offset + s.nbytes
    return slots, end


def _slot(i: int, row: object) -> Slot:
    if not isinstance(row, dict) or not isinstance(name := row.get("name"), str):
        raise PackedError(f"packed manifest entry {i} has no tensor name")
    raw = row.get("dtype")
    dtype = DTYPES.get(raw) if isinstance(raw, str) else None
    if dtype is None:
        raise PackedError(f"packed tensor {name!r}: unknown dtype {raw!r}")
    shape, offset = row.get("shape"), row.get("offset")
    if not isinstance(shape, list) or not all(_natural(d) for d in shape):
        raise PackedError(f"packed tensor {name!r}: shape {shape!r} is not a list of "
                          "integers >= 0")
    if not _natural(offset) or offset % dtype.itemsize:
        raise PackedError(f"packed tensor {name!r}: offset {offset!r} is not an integer >= 0 "
                          f"aligned to its {dtype.itemsize}-byte elements")
    strides = tuple(math.prod(shape[k + 1 :]) for k in range(len(shape)))
    return Slot(name, dtype, tuple(shape), offset, math.prod(shape) * dtype.itemsize, strides)


def _natural(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x >= 0
