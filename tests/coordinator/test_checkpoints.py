"""coordinator/checkpoints.py: atomic, hashed, dtype-keeping round checkpoints."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
import torch

from coordinator.checkpoints import (
    CheckpointError,
    checkpoint_name,
    load_checkpoint,
    save_checkpoint,
)


def params_and_slots() -> tuple[dict[str, torch.Tensor], dict[str, dict[str, torch.Tensor]]]:
    gen = torch.Generator().manual_seed(0)
    params = {
        # Not alphabetical, on purpose: the state_dict order must come back.
        "fc2.weight": torch.randn(3, 4, generator=gen),  # float32
        "fc1.weight": torch.randn(4, 5, generator=gen).to(torch.float16),
        "bn.num_batches_tracked": torch.tensor(7, dtype=torch.int64),
        "emb.weight": torch.randn(6, 2, generator=gen).to(torch.bfloat16),
    }
    slots = {
        "m": {k: torch.full_like(v, 0.5) for k, v in params.items() if v.is_floating_point()},
        "v": {"fc2.weight": torch.rand(3, 4, generator=gen)},
    }
    return params, slots


def test_round_trip_keeps_values_dtypes_order_and_state(tmp_path: Path) -> None:
    params, slots = params_and_slots()
    path, digest = save_checkpoint(
        tmp_path, round_number=3, params=params, opt_state_step=17, opt_slots=slots
    )
    assert path == tmp_path / "round-00003.safetensors" == tmp_path / checkpoint_name(3)
    assert digest == hashlib.sha256(path.read_bytes()).hexdigest()

    ckpt = load_checkpoint(path, digest)

    assert (ckpt.round_number, ckpt.opt_step) == (3, 17)
    assert list(ckpt.params) == list(params)
    for name, tensor in params.items():
        assert ckpt.params[name].dtype == tensor.dtype, name
        assert torch.equal(ckpt.params[name], tensor), name
    assert ckpt.params["fc1.weight"].dtype == torch.float16
    assert ckpt.params["bn.num_batches_tracked"].dtype == torch.int64
    assert set(ckpt.opt_slots) == {"m", "v"}
    assert list(ckpt.opt_slots["m"]) == list(slots["m"])
    for slot, tensors in slots.items():
        for name, tensor in tensors.items():
            got = ckpt.opt_slots[slot][name]
            assert got.dtype == tensor.dtype and torch.equal(got, tensor), (slot, name)


def test_file_layout_is_params_by_name_and_slots_prefixed(tmp_path: Path) -> None:
    from safetensors import safe_open

    params, slots = params_and_slots()
    path, _ = save_checkpoint(
        tmp_path, round_number=12, params=params, opt_state_step=5, opt_slots=slots
    )
    with safe_open(str(path), framework="pt") as f:
        keys, meta = set(f.keys()), f.metadata()
    assert keys == set(params) | {f"opt.m.{k}" for k in slots["m"]} | {"opt.v.fc2.weight"}
    assert meta["round"] == "12" and meta["opt_step"] == "5"


def test_no_slots_and_tied_weights(tmp_path: Path) -> None:
    shared = torch.arange(6, dtype=torch.float32)
    params = {"a": shared, "b": shared, "c": shared[:3]}  # tied and a view: one storage
    path, digest = save_checkpoint(
        tmp_path, round_number=1, params=params, opt_state_step=0, opt_slots={}
    )
    ckpt = load_checkpoint(path, digest)
    assert ckpt.opt_slots == {} and ckpt.opt_step == 0
    assert torch.equal(ckpt.params["b"], shared) and torch.equal(ckpt.params["c"], shared[:3])


def test_corrupted_byte_is_a_hash_mismatch(tmp_path: Path) -> None:
    params, slots = params_and_slots()
    path, digest = save_checkpoint(
        tmp_path, round_number=2, params=params, opt_state_step=1, opt_slots=slots
    )
    data = bytearray(path.read_bytes())
    data[-3] ^= 0x01  # one bit of one tensor value
    path.write_bytes(bytes(data))
    got = hashlib.sha256(bytes(data)).hexdigest()

    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path, digest)

    message = str(info.value)
    assert str(path) in message
    assert f"hash mismatch (expected {digest}, got {got})" in message


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "round-00009.safetensors"
    with pytest.raises(CheckpointError, match="missing") as info:
        load_checkpoint(path, "00" * 32)
    assert str(path) in str(info.value)


def test_right_hash_but_not_a_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "round-00001.safetensors"
    path.write_bytes(b"not safetensors")
    digest = hashlib.sha256(b"not safetensors").hexdigest()
    with pytest.raises(CheckpointError, match="not a fedmerge checkpoint"):
        load_checkpoint(path, digest)


def test_overwrite_is_atomic_and_leaves_no_temp_files(tmp_path: Path) -> None:
    params, slots = params_and_slots()
    out = tmp_path / "ckpts" / "run1"  # created on demand
    first, _ = save_checkpoint(out, round_number=1, params=params, opt_state_step=1, opt_slots={})
    params2 = {k: v + 1 if v.is_floating_point() else v for k, v in params.items()}
    path, digest = save_checkpoint(
        out, round_number=1, params=params2, opt_state_step=2, opt_slots=slots
    )
    assert path == first
    assert sorted(os.listdir(out)) == ["round-00001.safetensors"]
    ckpt = load_checkpoint(path, digest)
    assert ckpt.opt_step == 2 and torch.equal(ckpt.params["fc2.weight"], params2["fc2.weight"])


def test_failed_write_keeps_the_old_file_and_cleans_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    params, _ = params_and_slots()
    path, digest = save_checkpoint(
        tmp_path, round_number=4, params=params, opt_state_step=1, opt_slots={}
    )

    def disk_full(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(OSError, match="No space"):
        save_checkpoint(
            tmp_path, round_number=4, params={"x": torch.ones(2)}, opt_state_step=9, opt_slots={}
        )
    monkeypatch.undo()
    assert sorted(os.listdir(tmp_path)) == ["round-00004.safetensors"]
    assert load_checkpoint(path, digest).opt_step == 1  # the old checkpoint is intact


@pytest.mark.parametrize(
    ("params", "slots", "match"),
    [
        ({"opt.x": torch.ones(1)}, {}, "collides"),
        ({"x": torch.ones(1)}, {"m.v": {"x": torch.ones(1)}}, "slot name"),
    ],
)
def test_ambiguous_names_are_refused(
    tmp_path: Path, params: dict[str, torch.Tensor], slots: dict, match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        save_checkpoint(tmp_path, round_number=1, params=params, opt_state_step=0, opt_slots=slots)
    assert os.listdir(tmp_path) == []
