"""Round checkpoints: the shared model and the server optimizer's state, one file a round.

``round-00003.safetensors`` holds the parameters under their own names and each
optimizer slot tensor as ``opt.<slot>.<name>``; metadata carries the round and the
optimizer's step count. Writes are atomic (temp file, fsync, rename, fsync the
directory), so a coordinator killed mid-write leaves the previous checkpoint intact.
The store records the file's sha256; loading checks it before trusting a byte.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path

import safetensors.torch
from torch import Tensor

from coordinator.store.paths import private_dir

SLOT_PREFIX = "opt."


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, altered or unreadable; the message names the file."""


class CheckpointWriteError(OSError, CheckpointError):
    """The checkpoint could not be written (``errno`` says why, e.g. ENOSPC); the
    previous checkpoints are untouched and no partial file is left."""


@dataclass(frozen=True)
class Checkpoint:
    round_number: int
    params: dict[str, Tensor]
    opt_step: int
    opt_slots: dict[str, dict[str, Tensor]]  # slot name ("m", "v") -> tensors keyed like params


def checkpoint_name(round_number: int) -> str:
    return f"round-{round_number:05d}.safetensors"


def _flat_tensors(
    params: dict[str, Tensor], opt_slots: dict[str, dict[str, Tensor]]
) -> dict[str, Tensor]:
    for name in params:
        if name.startswith(SLOT_PREFIX):
            raise ValueError(f"parameter name {name!r} collides with the optimizer slot prefix")
    for slot in opt_slots:
        if not slot or "." in slot:
            raise ValueError(f"optimizer slot name {slot!r} must be non-empty and without '.'")
    named = list(params.items()) + [
        (f"{SLOT_PREFIX}{slot}.{name}", t)
        for slot, ts in opt_slots.items()
        for name, t in ts.items()
    ]
    flat: dict[str, Tensor] = {}
    storages: set[int] = set()
    for key, tensor in named:
        t = tensor.detach().cpu().contiguous()
        # safetensors refuses tensors that share memory (tied weights, views of one
        # buffer): copy the second and later ones, which is what loading gives back anyway.
        storage = t.untyped_storage().data_ptr()
        if storage in storages and t.numel() > 0:
            t = t.clone()
        storages.add(t.untyped_storage().data_ptr())
        flat[key] = t
    return flat


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)  # makes the rename itself durable
    finally:
        os.close(fd)


def save_checkpoint(
    directory: Path,
    *,
    round_number: int,
    params: dict[str, Tensor],
    opt_state_step: int,
    opt_slots: dict[str, dict[str, Tensor]],
) -> tuple[Path, str]:
    """Write the round's checkpoint atomically; returns (path, sha256 hex of its bytes)."""
    directory = private_dir(Path(directory))  # made 0700; the file is 0600 (mkstemp)
    path = directory / checkpoint_name(round_number)
    metadata = {
        "round": str(round_number),
        "opt_step": str(opt_state_step),
        # safetensors sorts its tensors; this gives back the state_dict order on load.
        "param_order": json.dumps(list(params)),
    }
    data = safetensors.torch.save(_flat_tensors(params, opt_slots), metadata=metadata)
    digest = hashlib.sha256(data).hexdigest()
    fd, tmp_name = tempfile.mkstemp(dir=directory, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_name, path)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        if isinstance(exc, OSError):  # e.g. ENOSPC: the disk filled up
            why = exc.strerror or str(exc)
            raise CheckpointWriteError(exc.errno, f"cannot write checkpoint {path}: {why}"
                                       ) from exc
        raise
    _fsync_dir(directory)
    return path, digest


def _metadata(data: bytes) -> dict[str, str]:
    # safetensors layout: u64 little-endian header length, then the JSON header.
    (length,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + length])
    return header.get("__metadata__") or {}


def _rank(key: str, rank: dict[str, int]) -> tuple[int, str]:
    name = key[len(SLOT_PREFIX) :].partition(".")[2] if key.startswith(SLOT_PREFIX) else key
    return rank.get(name, len(rank)), key


def load_checkpoint(path: Path, sha256: str) -> Checkpoint:
    """Read a checkpoint after checking its bytes against the sha256 the store recorded."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError as exc:
        raise CheckpointError(f"checkpoint {path} is missing") from exc
    except OSError as exc:
        raise CheckpointError(f"checkpoint {path} is unreadable: {exc}") from exc
    got = hashlib.sha256(data).hexdigest()
    if got != sha256.lower():
        raise CheckpointError(f"checkpoint {path}: hash mismatch (expected {sha256}, got {got})")
    try:
        meta = _metadata(data)
        tensors = safetensors.torch.load(data)
        round_number, opt_step = int(meta["round"]), int(meta["opt_step"])
        order: list[str] = json.loads(meta.get("param_order", "[]"))
    except Exception as exc:  # the right bytes, yet not a checkpoint of ours
        raise CheckpointError(f"checkpoint {path} is not a fedmerge checkpoint: {exc}") from exc
    rank = {name: i for i, name in enumerate(order)}
    params: dict[str, Tensor] = {}
    slots: dict[str, dict[str, Tensor]] = {}
    for key, tensor in sorted(tensors.items(), key=lambda kv: _rank(kv[0], rank)):
        if key.startswith(SLOT_PREFIX):
            slot, _, name = key[len(SLOT_PREFIX) :].partition(".")
            slots.setdefault(slot, {})[name] = tensor
        else:
            params[key] = tensor
    return Checkpoint(round_number=round_number, params=params, opt_step=opt_step, opt_slots=slots)
