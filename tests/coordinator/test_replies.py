"""Decoding and validating one reply: every bad input is named, nothing is copied."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord

from client.packed import PACKED_NAME, PACKED_STYPE
from coordinator.replies import UpdateLimits, UpdateRejected, decode_reply
from tests.utils.replies import error_reply, reply

TEMPLATE = {"w": torch.zeros(3, 2), "b": torch.zeros(2)}
GOOD = {"w": np.ones((3, 2), np.float32), "b": np.full(2, 2.0, np.float32)}


def test_good_reply_decodes_to_views_with_weight_and_norm() -> None:
    d = decode_reply(reply(GOOD, examples=42, node=5), TEMPLATE, UpdateLimits())
    assert d.update.weight == 42 and d.update.client_id == "5"
    assert torch.equal(d.update.offset["w"], torch.ones(3, 2))
    assert d.norm == pytest.approx(np.sqrt(6 + 8))
    assert d.update.offset["b"].dtype == torch.float32


@pytest.mark.parametrize(
    ("arrays", "kwargs", "reason"),
    [
        ({"w": GOOD["w"]}, {}, "missing tensor(s) ['b']"),
        ({**GOOD, "extra": np.zeros(1, np.float32)}, {}, "unknown tensor(s) ['extra']"),
        ({**GOOD, "w": np.ones((2, 3), np.float32)}, {}, "shape (2, 3) != model's (3, 2)"),
        ({**GOOD, "w": np.ones((3, 2), np.float64)}, {}, "dtype torch.float64 != model's"),
        ({**GOOD, "b": np.array([np.nan, 0], np.float32)}, {}, "non-finite"),
        ({**GOOD, "b": np.array([np.inf, 0], np.float32)}, {}, "non-finite"),
        (GOOD, {"examples": 0}, "num-examples must be > 0"),
        (GOOD, {"examples": -5}, "num-examples must be > 0"),
        (GOOD, {"examples": 10**9}, "exceeds the cap"),
        ({"w": GOOD["w"]}, {"manifest": ["w", "nope"]}, "manifest names unknown tensor"),
    ],
)
@pytest.mark.parametrize("packed", [False, True])
def test_bad_replies_are_rejected_with_the_reason(arrays, kwargs, reason, packed) -> None:
    with pytest.raises(UpdateRejected) as exc:
        decode_reply(reply(arrays, packed=packed, **kwargs), TEMPLATE,
                     UpdateLimits(max_examples=10**6))
    assert reason in str(exc.value)


def test_client_error_and_norm_bound() -> None:
    with pytest.raises(UpdateRejected, match="client error: out of memory"):
        decode_reply(error_reply(3, "out of memory"), TEMPLATE, UpdateLimits())
    with pytest.raises(UpdateRejected, match="exceeds max-update-norm 1.0"):
        decode_reply(reply(GOOD), TEMPLATE, UpdateLimits(max_update_norm=1.0))


def test_partial_update_is_accepted_only_with_a_matching_manifest() -> None:
    d = decode_reply(reply({"b": GOOD["b"]}, manifest=["b"]), TEMPLATE, UpdateLimits())
    assert set(d.update.offset) == {"b"}
    with pytest.raises(UpdateRejected, match="missing tensor"):
        decode_reply(reply({"b": GOOD["b"]}, manifest=["w", "b"]), TEMPLATE, UpdateLimits())


def test_fisher_is_checked_like_the_offset() -> None:
    fisher = {k: np.ones_like(v) for k, v in GOOD.items()}
    d = decode_reply(reply(GOOD, fisher=fisher), TEMPLATE, UpdateLimits())
    assert d.update.fisher is not None and set(d.update.fisher) == {"w", "b"}
    with pytest.raises(UpdateRejected, match="negative"):
        decode_reply(reply(GOOD, fisher={**fisher, "b": -fisher["b"]}), TEMPLATE, UpdateLimits())


@pytest.mark.parametrize("manifest", [None, ["b"]])
def test_packed_and_per_tensor_replies_decode_alike(manifest) -> None:
    """Our ClientApp's packed reply and a per-tensor one (a ClientApp written against
    Flower's API) give the same update: views, names, weight, norm, fisher."""
    sent = GOOD if manifest is None else {"b": GOOD["b"]}
    fisher = {k: np.full_like(v, 0.5) for k, v in sent.items()}
    per_tensor, packed = (
        decode_reply(reply(sent, examples=7, manifest=manifest, fisher=fisher, packed=p),
                     TEMPLATE, UpdateLimits())
        for p in (False, True)
    )
    assert packed.update.offset.keys() == per_tensor.update.offset.keys() == set(sent)
    for name in sent:
        assert torch.equal(packed.update.offset[name], per_tensor.update.offset[name])
        assert torch.equal(packed.update.fisher[name], per_tensor.update.fisher[name])
    assert packed.norm == per_tensor.norm and packed.update.weight == 7


def test_a_malformed_packed_reply_is_rejected_not_a_crash() -> None:
    msg = reply(GOOD, packed=True)
    data = bytearray(msg.content["arrays"][PACKED_NAME].data)
    data[:4] = b"XXXX"
    msg.content["arrays"] = ArrayRecord({PACKED_NAME: Array(
        dtype="uint8", shape=(len(data),), stype=PACKED_STYPE, data=bytes(data))})
    with pytest.raises(UpdateRejected, match="offset: packed payload does not start"):
        decode_reply(msg, TEMPLATE, UpdateLimits())
    fisher = reply(GOOD, fisher=GOOD, packed=True)
    fisher.content["fisher"] = msg.content["arrays"]
    with pytest.raises(UpdateRejected, match="fisher: packed payload"):
        decode_reply(fisher, TEMPLATE, UpdateLimits())
