"""bench/attacks.py: each attack does what its docstring says, on real replies; the run
config's new keys are validated with the key named."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, Message, MetricRecord, RecordDict

from bench.attacks import ATTACKS, LIE_Z, Adversary, LabelFlippedDigits, _flatten
from client.tasks.api import PartitionRequest
from client.tasks.digits import DigitsSettings, DigitsTask
from coordinator.config import ConfigError, parse_run_config
from tests.utils import replies as _identity  # noqa: F401 - Message() needs a task identity

HOSTILE = frozenset({7, 8, 9})


class NoHeldOut(DigitsTask):
    """Digits without a held-out split for the coordinator."""

    def central_data(self) -> None:
        return None


def round_replies(seed: int = 0) -> dict[int, Message]:
    rng = np.random.default_rng(seed)
    out = {}
    for p in range(10):
        arrays = {"w": rng.normal(size=(4, 3)).astype(np.float32),
                  "b": rng.normal(size=3).astype(np.float32)}
        content = RecordDict({"arrays": ArrayRecord({k: Array(v) for k, v in arrays.items()}),
                              "metrics": MetricRecord({"num-examples": 10})})
        out[p] = Message(content, dst_node_id=p + 1, message_type="train")
    return out


def flats(replies: dict[int, Message], parts) -> torch.Tensor:
    return torch.stack([_flatten(replies[p])[0] for p in parts])


def test_little_is_enough_sends_the_honest_mean_minus_z_std() -> None:
    replies = round_replies()
    honest = flats(replies, range(7))
    Adversary("little", HOSTILE).rewrite(replies, 1)
    expected = honest.mean(0) - LIE_Z * honest.std(0)
    for p in HOSTILE:
        assert torch.allclose(flats(replies, [p])[0], expected, atol=1e-5)
    assert torch.equal(flats(replies, range(7)), honest)  # honest replies untouched


def test_inner_product_manipulation_points_against_the_honest_mean() -> None:
    replies = round_replies(1)
    honest = flats(replies, range(7))
    Adversary("ipm", HOSTILE).rewrite(replies, 1)
    crafted = flats(replies, [7])[0]
    assert float(crafted @ honest.mean(0)) < 0


def test_min_max_stays_within_the_honest_spread_and_moves_as_far_as_it_can() -> None:
    replies = round_replies(2)
    honest = flats(replies, range(7))
    Adversary("min-max", HOSTILE).rewrite(replies, 1)
    crafted = flats(replies, [8])[0]
    bound = float(torch.cdist(honest, honest).max())
    reach = float(torch.cdist(crafted[None], honest).max())
    assert reach <= bound * (1 + 1e-5) and reach >= bound * 0.99


def test_own_offset_attacks() -> None:
    replies = round_replies(3)
    before = flats(replies, sorted(HOSTILE))
    Adversary("sign-flip", HOSTILE).rewrite(replies, 1)
    assert torch.allclose(flats(replies, sorted(HOSTILE)), -10 * before, atol=1e-4)
    replies = round_replies(3)
    Adversary("nan-inf", HOSTILE).rewrite(replies, 1)
    got = flats(replies, sorted(HOSTILE))
    assert torch.isnan(got[0]).any() and torch.isinf(got[1]).any()
    replies = round_replies(3)
    Adversary("gaussian", HOSTILE).rewrite(replies, 1)
    noise = flats(replies, sorted(HOSTILE))
    assert torch.isfinite(noise).all() and not torch.allclose(noise, before)


def test_label_flippers_train_on_9_minus_y() -> None:
    request = PartitionRequest(3, 10, "dirichlet", 0.1, 2, 0)
    honest = DigitsTask(DigitsSettings()).partition(request)
    flipped = LabelFlippedDigits(DigitsSettings()).partition(request)
    np.testing.assert_array_equal(flipped.y_train, 9 - honest.y_train)
    np.testing.assert_array_equal(flipped.x_train, honest.x_train)
    adversary = Adversary("label-flip", HOSTILE)
    assert adversary.task_for(8) == "bench.attacks:LabelFlippedDigits"
    assert adversary.task_for(2) is None


def test_an_unknown_attack_is_refused_with_the_known_ones() -> None:
    with pytest.raises(ValueError, match="known"):
        Adversary("nope", HOSTILE)
    assert len(ATTACKS) == 7


@pytest.mark.parametrize(("key", "value"), [("bucket-size", 0), ("cc-tau", -1.0),
                                            ("cc-iterations", 0), ("fltrust-root-size", 0),
                                            ("fltrust-scale", "mean"),
                                            ("combiner", "bucketed-mean")])
def test_robust_keys_are_validated_with_the_key_named(key: str, value: object) -> None:
    with pytest.raises(ConfigError, match=key):
        parse_run_config({key: value})


def test_fltrust_needs_held_out_data() -> None:
    parse_run_config({"combiner": "fltrust"})  # digits has a held-out split
    with pytest.raises(ConfigError, match="combiner: fltrust needs the coordinator's held-out"):
        parse_run_config({"combiner": "fltrust",
                          "task": "tests.attacks.test_attack_library:NoHeldOut"})


def test_benchmark_runs_of_other_defences_merge_per_cell() -> None:
    from bench.robust import merge_grids

    a = {"s/sgd/0": {"honest-7": {"acc": 0.5}, "honest-10": {"mean": {"acc": 0.6}},
                     "ipm": {"mean": {"acc": 0.4}}}}
    b = {"s/sgd/0": {"honest-7": {"acc": 0.5}, "honest-10": {"cc": {"acc": 0.7}},
                     "ipm": {"cc": {"acc": 0.45}}},
         "s/sgd/1": {"honest-7": {"acc": 0.3}}}
    out = merge_grids([a, b])
    assert out["s/sgd/0"]["honest-10"] == {"mean": {"acc": 0.6}, "cc": {"acc": 0.7}}
    assert out["s/sgd/0"]["ipm"] == {"mean": {"acc": 0.4}, "cc": {"acc": 0.45}}
    assert out["s/sgd/0"]["honest-7"] == {"acc": 0.5} and set(out) == {"s/sgd/0", "s/sgd/1"}
