"""The single-pass checked sum: refusals are exact, and it equals the two-pass mean."""

from __future__ import annotations

import math

import pytest
import torch

from aggregation import ClientUpdate, WeightedMean
from aggregation.streaming import CheckedSum, plan_blocks

BLOCK = 64  # small blocks, so a model of a few hundred elements has several
LAYOUT = {"w": (20, 30), "b": (7,), "c": (5,), "v": (130,)}


def template() -> dict[str, torch.Tensor]:
    return {k: torch.zeros(s) for k, s in LAYOUT.items()}


def update(seed: int, weight: float = 10.0, names: tuple[str, ...] = tuple(LAYOUT)):
    g = torch.Generator().manual_seed(seed)
    offset = {k: torch.randn(LAYOUT[k], generator=g) for k in names}
    return ClientUpdate(offset, weight, None, f"c{seed}")


def never(norm: float) -> str | None:
    return None if math.isfinite(norm) else "non-finite"


def summed(groups, *, clip_norm=0.0, judge=never, threads=1):
    s = CheckedSum(clip_norm=clip_norm, threads=threads, block=BLOCK)
    s.reset(template())
    fates = [f for g in groups for f in s.add(g, judge)]
    return {k: t.clone() for k, t in s.mean().items()}, fates


def assert_same(a, b) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_blocks_cover_every_element_once() -> None:
    blocks = plan_blocks(template(), BLOCK)
    seen = {k: torch.zeros(s) for k, s in LAYOUT.items()}
    for b in blocks:
        if b.bundle:
            for n in b.names:
                seen[n] += 1
        else:
            seen[b.names[0]].view(-1)[b.start:b.stop] += 1
    assert all(torch.equal(t, torch.ones_like(t)) for t in seen.values())
    assert any(b.bundle and len(b.names) > 1 for b in blocks)  # small tensors bundled


@pytest.mark.parametrize("where", ["w", "v", "c"])  # a slice block, the last, a bundle
def test_a_nan_in_the_last_block_leaves_the_sum_as_without_the_reply(where) -> None:
    good = [update(1, 5.0), update(2, 7.0), update(3, 11.0)]
    bad = update(4, 100.0)
    bad.offset[where].view(-1)[-1] = float("nan")
    without, _ = summed([good])
    with_bad, fates = summed([[good[0], bad, good[1]], [good[2]]])
    assert_same(with_bad, without)
    assert [f.problem for f in fates] == [None, "non-finite", None, None]
    assert math.isnan(fates[1].norm)


def test_a_reply_over_the_norm_bound_is_left_out_exactly() -> None:
    good = [update(1), update(2)]
    big = ClientUpdate({k: 50 * t for k, t in update(3).offset.items()}, 10.0, None, "big")
    bound = 1.5 * max(math.sqrt(sum(float(t.square().sum()) for t in u.offset.values()))
                      for u in good)

    def judge(norm: float) -> str | None:
        return None if norm <= bound else "too big"

    without, _ = summed([good], judge=judge)
    got, fates = summed([[good[0], big, good[1]]], judge=judge)
    assert_same(got, without)
    assert [f.problem for f in fates] == [None, "too big", None]


@pytest.mark.parametrize("threads", [1, 3])
@pytest.mark.parametrize("group", [1, 2, 5])
def test_equals_the_two_pass_weighted_mean(group, threads) -> None:
    ups = [update(i, float(3 + i)) for i in range(5)]
    ups.append(update(9, 4.0, names=("w", "c")))  # a partial update
    expected = WeightedMean().combine(ups, template()).offset
    groups = [ups[i:i + group] for i in range(0, len(ups), group)]
    got, fates = summed(groups, threads=threads)
    assert_same(got, expected)
    for u, f in zip(ups, fates, strict=True):
        ref = math.sqrt(sum(float(t.double().square().sum()) for t in u.offset.values()))
        assert f.norm == pytest.approx(ref, rel=1e-6)


def test_clipping_matches_the_two_pass_clipped_mean() -> None:
    ups = [update(i, float(1 + i)) for i in range(4)]
    clip = 0.8 * min(math.sqrt(sum(float(t.square().sum()) for t in u.offset.values()))
                     for u in ups[2:])
    expected = WeightedMean(clip_norm=clip).combine(ups, template()).offset
    got, fates = summed([ups], clip_norm=clip)
    for k in expected:
        torch.testing.assert_close(got[k], expected[k], rtol=1e-6, atol=1e-7)
    assert all(f.scale < 1.0 for f in fates[2:])


def test_a_tensor_nobody_sent_is_left_out() -> None:
    got, _ = summed([[update(1, names=("w",)), update(2, names=("w", "b"))]])
    assert set(got) == {"w", "b"}


def test_threads_follow_the_setting_or_the_model_size() -> None:
    from aggregation.streaming import PARALLEL_MIN, merge_threads

    assert merge_threads(3, 10) == 3
    assert merge_threads(0, PARALLEL_MIN - 1, load=0.0) == 1
    assert merge_threads(0, PARALLEL_MIN, load=1e6) == 1  # no idle core: one worker
    assert merge_threads(0, PARALLEL_MIN, load=0.0) >= 1
    with pytest.raises(ValueError, match="threads must be >= 0"):
        CheckedSum(threads=-1)
