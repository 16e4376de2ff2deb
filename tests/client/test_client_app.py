"""client/client_app.py called directly: a real flwr Message and Context, the round's
ConfigRecord as the coordinator builds it, and the reply checked as the coordinator does."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict

import tests.utils.replies  # noqa: F401  (stamps a TaskIdentity so Message() works here)
from client.client_app import OFFSET_STATE_KEY, evaluate_shared, train
from client.models import build_model
from client.packed import PACKED_NAME, is_packed, packed_record, unpack
from coordinator.config import parse_run_config
from coordinator.federation import client_config
from coordinator.replies import UpdateLimits, decode_reply

FC2 = ["fc2.weight", "fc2.bias"]


def theta() -> dict[str, torch.Tensor]:
    return {k: t.detach().clone() for k, t in build_model("mlp", seed=0).state_dict().items()}


def context(**node_config: Any) -> Context:
    return Context(
        run_id=1, node_id=1, node_config={"partition-id": 0, "num-partitions": 5, **node_config},
        state=RecordDict(), run_config={},
    )


def message(
    params: dict[str, torch.Tensor], *, server_round: int = 1,
    kind: str = MessageType.TRAIN, **run_config: Any,
) -> Message:
    config = client_config(parse_run_config({"local-epochs": 1, "device": "cpu", **run_config}))
    config["server-round"] = server_round
    content = RecordDict({"arrays": ArrayRecord(params), "config": config})
    return Message(content, dst_node_id=1, message_type=kind)


def offset_of(reply: Message) -> dict[str, torch.Tensor]:
    return reply.content["arrays"].to_torch_state_dict()


def test_a_global_round_replies_with_the_offset_and_its_metrics() -> None:
    ctx = context()
    reply = train(message(theta()), ctx)
    assert not reply.has_error()
    assert set(reply.content) == {"arrays", "metrics"}  # no manifest, no fisher
    offset = offset_of(reply)
    assert list(offset) == list(theta())
    for k, t in theta().items():
        assert offset[k].dtype == t.dtype and offset[k].shape == t.shape
        assert torch.isfinite(offset[k]).all() and offset[k].abs().max() > 0
    metrics = reply.content["metrics"]
    assert metrics["num-examples"] > 0 and metrics["partition-id"] == 0
    assert np.isfinite(metrics["train-loss"]) and 0.0 <= metrics["shared-acc"] <= 1.0
    assert "personal-acc" not in metrics
    assert OFFSET_STATE_KEY not in ctx.state  # global mode keeps nothing between rounds
    # ... and the coordinator accepts it as it is.
    decoded = decode_reply(reply, theta(), UpdateLimits())
    assert decoded.update.weight == metrics["num-examples"]


def test_the_round_number_seeds_local_training() -> None:
    a = offset_of(train(message(theta(), server_round=3), context()))
    b = offset_of(train(message(theta(), server_round=3), context()))
    c = offset_of(train(message(theta(), server_round=4), context()))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_train_tensors_sends_a_partial_update_with_its_manifest() -> None:
    reply = train(message(theta()), context(**{"train-tensors": "fc2"}))
    assert sorted(offset_of(reply)) == sorted(FC2)
    manifest = reply.content["manifest"]
    assert isinstance(manifest, ConfigRecord) and sorted(manifest["tensors"]) == sorted(FC2)
    decoded = decode_reply(reply, theta(), UpdateLimits())
    assert sorted(decoded.update.offset) == sorted(FC2)


def test_train_tensors_takes_exact_names_too() -> None:
    reply = train(message(theta()), context(**{"train-tensors": "fc1.bias, fc2.bias"}))
    assert sorted(offset_of(reply)) == ["fc1.bias", "fc2.bias"]
    assert sorted(reply.content["manifest"]["tensors"]) == ["fc1.bias", "fc2.bias"]


def test_train_tensors_naming_no_tensor_is_an_error() -> None:
    with pytest.raises(ValueError, match="match no tensor"):
        train(message(theta()), context(**{"train-tensors": "conv9"}))


@pytest.mark.parametrize("partial", [False, True], ids=["full", "partial"])
def test_the_fisher_combiner_makes_clients_send_a_fisher(partial: bool) -> None:
    node = {"train-tensors": "fc2"} if partial else {}
    reply = train(message(theta(), combiner="fisher"), context(**node))
    fisher = reply.content["fisher"].to_torch_state_dict()
    offset = offset_of(reply)
    assert sorted(fisher) == sorted(offset)
    for k in fisher:
        assert fisher[k].dtype == offset[k].dtype and fisher[k].shape == offset[k].shape
        assert torch.isfinite(fisher[k]).all() and (fisher[k] >= 0).all()
        assert fisher[k].sum() > 0
    decoded = decode_reply(reply, theta(), UpdateLimits())
    assert decoded.update.fisher is not None


def test_personal_mode_keeps_the_offset_and_warm_starts_from_it() -> None:
    ctx = context()
    first = train(message(theta(), mode="personal", lam=0.1), ctx)
    kept = ctx.state[OFFSET_STATE_KEY].to_torch_state_dict()
    sent = offset_of(first)
    assert all(torch.equal(kept[k], sent[k]) for k in sent)
    assert 0.0 <= first.content["metrics"]["personal-acc"] <= 1.0
    # With a vanishing step the next round ends where it started: the kept offset
    # (warm start), not zero (cold start).
    still = {"mode": "personal", "lam": 0.1, "local-lr": 1e-12}
    warm = offset_of(train(message(theta(), server_round=2, **still), ctx))
    cold = offset_of(train(message(theta(), server_round=2, **still), context()))
    for k in sent:
        torch.testing.assert_close(warm[k], sent[k], rtol=0, atol=1e-6)
        assert cold[k].abs().max() < 1e-6


def test_evaluate_reports_shared_and_personal_metrics() -> None:
    ctx = context()
    params = theta()
    shared = evaluate_shared(message(params, kind=MessageType.EVALUATE), ctx)
    metrics = shared.content["metrics"]
    assert {"eval-loss", "eval-acc", "num-examples", "partition-id"} <= set(metrics)
    assert "personal-acc" not in metrics
    train(message(params, mode="personal", lam=0.1), ctx)
    personal = evaluate_shared(message(params, kind=MessageType.EVALUATE, mode="personal"), ctx)
    metrics = personal.content["metrics"]
    assert 0.0 <= metrics["personal-acc"] <= 1.0 and np.isfinite(metrics["personal-loss"])
    # theta + theta_i was trained on this client's data: it fits its validation split better.
    assert metrics["personal-loss"] < metrics["eval-loss"]


@pytest.mark.parametrize("how", ["separate", "off"])
def test_a_train_reply_carries_no_evaluation_unless_folded(how: str) -> None:
    metrics = train(message(theta(), **{"federated-evaluation": how}), context())
    assert not any(k.startswith("eval-") for k in metrics.content["metrics"])


def test_a_folded_train_reply_carries_what_the_evaluate_reply_says() -> None:
    """Personal mode, second round: theta and theta + the kept theta_i, before training."""
    ctx, params = context(), theta()
    train(message(params, mode="personal", lam=0.1), ctx)  # keeps a theta_i
    evaluated = evaluate_shared(
        message(params, kind=MessageType.EVALUATE, mode="personal", lam=0.1), ctx
    ).content["metrics"]
    folded = train(message(params, server_round=2, mode="personal", lam=0.1), ctx)
    metrics = folded.content["metrics"]
    assert metrics["eval-num-examples"] == evaluated["num-examples"] > 0
    assert metrics["num-examples"] != metrics["eval-num-examples"]  # train vs validation
    for key in ("eval-loss", "eval-acc"):
        assert metrics[key] == pytest.approx(evaluated[key], rel=1e-6)
    for key in ("personal-acc", "personal-loss"):
        assert metrics[f"eval-{key}"] == pytest.approx(evaluated[key], rel=1e-6)
    # the round's own personal metrics are of the offset it has just trained
    assert metrics["personal-loss"] != pytest.approx(metrics["eval-personal-loss"])


@pytest.mark.parametrize("extra", [{}, {"combiner": "fisher"}])
def test_a_packed_request_gets_a_packed_reply_with_the_same_numbers(extra) -> None:
    """The reply travels as theta did: packed to fedmerge's coordinator (one Array per
    record), one Array per tensor to a ServerApp that sends that (Flower's strategies)."""
    plain = train(message(theta(), **extra), context())
    msg = message(theta(), **extra)
    msg.content["arrays"] = packed_record(theta())
    packed = train(msg, context())
    for key in ["arrays"] + (["fisher"] if extra else []):
        assert is_packed(packed.content[key]) and not is_packed(plain.content[key])
        ours, theirs = unpack(packed.content[key][PACKED_NAME]), plain.content[key]
        assert list(ours) == list(theirs)
        assert all(torch.equal(ours[k], torch.from_numpy(theirs[k].numpy())) for k in ours), key
    assert decode_reply(packed, theta(), UpdateLimits()).norm == pytest.approx(
        decode_reply(plain, theta(), UpdateLimits()).norm)
