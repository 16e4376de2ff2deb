"""Merge's single-pass path: replies checked while they are added, refusals exact, the
same theta as decoding, validating and combining in two passes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from aggregation import ServerState, WeightedMean, objective_gradient, sgd
from aggregation.streaming import BLOCK_ELEMENTS
from coordinator.grid import Reply
from coordinator.merge import Merge
from coordinator.replies import ReplyValidator, UpdateLimits, decode_reply
from tests.utils.replies import reply

# "w" spans three blocks of the sum, so its last element is in a later block than its first
LAYOUT = {"w": (3, BLOCK_ELEMENTS), "b": (16,)}


def arrays(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {k: rng.standard_normal(s).astype(np.float32) for k, s in LAYOUT.items()}


def state() -> ServerState:
    params = {k: torch.zeros(s) for k, s in LAYOUT.items()}
    return ServerState(params, sgd(lr=1.0).init(params))


def run(merge: Merge, payloads: list[dict[str, np.ndarray]]):
    replies = [Reply(str(i + 1), reply(a, examples=10 + i, node=i + 1))
               for i, a in enumerate(payloads)]
    return merge(state(), iter(replies))


@pytest.mark.parametrize("group_max", [1, 16])
def test_a_reply_with_a_nan_in_its_last_block_leaves_theta_as_without_it(group_max) -> None:
    merge = Merge(ReplyValidator(), WeightedMean(), sgd(lr=1.0), group_max=group_max)
    assert merge.single_pass
    good = [arrays(1), arrays(2), arrays(3)]
    bad = arrays(4)
    bad["w"][-1, -1] = np.nan
    got, report = run(merge, [good[0], bad, good[1], good[2]])  # examples 10..13
    rejected = [c for c in report.clients if not c.accepted]
    assert [c.node_id for c in rejected] == ["2"]
    assert "non-finite" in (rejected[0].reason or "")
    assert report.accepted == 3
    expected = two_pass([(good[0], 10), (good[1], 12), (good[2], 13)])
    for k in expected:
        assert torch.equal(got.params[k], expected[k]), k


def test_over_the_norm_bound_is_rejected_with_the_reason() -> None:
    limits = UpdateLimits(max_update_norm=10.0)
    merge = Merge(ReplyValidator(limits), WeightedMean(), sgd(lr=1.0))
    small = {k: 1e-4 * v for k, v in arrays(1).items()}
    got, report = run(merge, [small, arrays(2)])
    assert [c.accepted for c in report.clients] == [False, True]
    assert "exceeds max-update-norm 10.0" in (report.clients[0].reason or "")
    expected = two_pass([(small, 10)])
    for k in expected:
        assert torch.equal(got.params[k], expected[k])


def test_equals_the_two_pass_path_and_records_each_norm() -> None:
    payloads = [arrays(i) for i in range(5)]
    merge = Merge(ReplyValidator(), WeightedMean(), sgd(lr=1.0), group_max=2)
    got, report = run(merge, payloads)
    expected = two_pass([(a, 10 + i) for i, a in enumerate(payloads)])
    for k in expected:
        assert torch.equal(got.params[k], expected[k]), k
    norms = {c.node_id: c.offset_norm for c in report.clients}
    for i, a in enumerate(payloads):
        ref = float(np.sqrt(sum(np.square(v, dtype=np.float64).sum() for v in a.values())))
        assert norms[str(i + 1)] == pytest.approx(ref, rel=1e-5)  # float32 dots


def test_a_bound_on_the_round_median_keeps_the_held_path() -> None:
    merge = Merge(ReplyValidator(UpdateLimits(max_norm_ratio=3.0)), WeightedMean(), sgd(lr=1.0))
    assert not merge.single_pass


def two_pass(weighted: list[tuple[dict[str, np.ndarray], int]]) -> dict[str, torch.Tensor]:
    """theta after one sgd lr 1 step from 0: decode_reply, then WeightedMean."""
    template = {k: torch.zeros(s) for k, s in LAYOUT.items()}
    ups = [decode_reply(reply(a, examples=n, node=i + 1), template, UpdateLimits()).update
           for i, (a, n) in enumerate(weighted)]
    mean = WeightedMean().combine(ups, template).offset
    params = {k: torch.zeros(s) for k, s in LAYOUT.items()}
    opt = sgd(lr=1.0)
    opt.step(params, objective_gradient(mean, scale=1.0), opt.init(params))
    return params
