"""The DP mean (aggregation/dp.py): noise calibration, clipping, fixed weights, adaptive
clip. Statistical checks use seeded noise, so they are deterministic; their tolerances
are stated in standard errors."""

from __future__ import annotations

import math

import pytest
import torch

from aggregation import ClientUpdate, WeightedMean
from aggregation.combiners import CombinerError
from aggregation.dp import AdaptiveClip, GaussianSumMean

TEMPLATE = {"w": torch.zeros(6, 5), "b": torch.zeros(5)}  # P = 35


def update(scale: float, *, seed: int, weight: float = 10.0, cid: str = "") -> ClientUpdate:
    g = torch.Generator().manual_seed(seed)
    offset = {k: torch.randn(t.shape, generator=g) for k, t in TEMPLATE.items()}
    norm = math.sqrt(sum(float(t.square().sum()) for t in offset.values()))
    return ClientUpdate({k: t * (scale / norm) for k, t in offset.items()}, weight,
                        client_id=cid or str(seed))


def flat(p: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.cat([p[k].reshape(-1) for k in TEMPLATE])


def dp_mean(**kw) -> GaussianSumMean:
    opts = {"clip": 1.0, "noise_multiplier": 0.8, "denominator": 5, "seed": 3, **kw}
    return GaussianSumMean(**opts)


def test_noise_calibration_mean_and_std_match_the_mechanism() -> None:
    """Over n merges of the same four offsets (two above the clip), per coordinate:
    mean = sum of clipped offsets / m, std = z C / m. The mean is checked to 5 standard
    errors (sigma / sqrt(n)) on every coordinate; the pooled std to 5 standard errors of
    a std estimate (about sigma / sqrt(2 n P))."""
    clip, z, m, n = 1.0, 0.8, 5, 4000
    ups = [update(0.5, seed=1), update(0.9, seed=2), update(3.0, seed=3), update(40.0, seed=4)]
    combiner = dp_mean(clip=clip, noise_multiplier=z, denominator=m)
    expected = sum(flat(u.offset) * min(1.0, clip / float(flat(u.offset).norm()))
                   for u in ups) / m
    draws = torch.stack([flat(combiner.combine(ups, TEMPLATE).offset).clone()
                         for _ in range(n)]).double()  # (n, P)
    sigma = z * clip / m
    mean_err = (draws.mean(0) - expected.double()).abs().max().item()
    assert mean_err < 5 * sigma / math.sqrt(n)
    std = (draws - expected.double()).std().item()
    assert abs(std - sigma) < 5 * sigma / math.sqrt(2 * draws.numel())
    # and a mechanism that forgot the denominator (std z C) or the noise would fail
    assert abs(std - z * clip) > 100 * sigma / math.sqrt(2 * draws.numel())


def test_an_offset_100x_the_clip_contributes_exactly_its_clipped_version() -> None:
    big = update(100.0, seed=5)
    noise_only = flat(dp_mean().combine([], TEMPLATE).offset).clone()
    merged = flat(dp_mean().combine([big], TEMPLATE).offset)  # same seed: same noise
    clipped = flat(big.offset) / 100.0
    torch.testing.assert_close(merged - noise_only, clipped / 5, rtol=0, atol=1e-6)
    assert float(clipped.norm()) == pytest.approx(1.0, rel=1e-5)


def test_a_client_claiming_a_million_examples_weighs_no_more_than_any_other() -> None:
    a, b = update(0.5, seed=6), update(0.5, seed=7)
    honest = dp_mean().combine([a, b], TEMPLATE).offset
    honest = {k: t.clone() for k, t in honest.items()}
    inflated = ClientUpdate(a.offset, 1e6, client_id=a.client_id)
    greedy = dp_mean().combine([inflated, b], TEMPLATE).offset
    for k in TEMPLATE:
        torch.testing.assert_close(greedy[k], honest[k], rtol=0, atol=0)
    # the examples-weighted mean would have followed the greedy client
    weighted = flat(WeightedMean().combine([inflated, b], TEMPLATE).offset)
    torch.testing.assert_close(weighted, flat(a.offset), rtol=1e-5, atol=1e-5)


def test_every_tensor_is_noised_even_one_nobody_sent_and_with_no_update() -> None:
    partial = ClientUpdate({"w": update(0.5, seed=8).offset["w"]}, 1.0, client_id="p")
    res = dp_mean().combine([partial], TEMPLATE)
    assert set(res.offset) == set(TEMPLATE) and res.num_clients == 1
    assert float(res.offset["b"].abs().sum()) > 0
    empty = dp_mean().combine([], TEMPLATE)
    assert set(empty.offset) == set(TEMPLATE) and empty.num_clients == 0


def test_noise_is_in_the_models_dtype_and_fresh_each_round() -> None:
    half = {"w": torch.zeros(4, 4, dtype=torch.float16)}
    comb = dp_mean()
    first = comb.combine([], half).offset["w"].clone()
    assert first.dtype == torch.float16
    assert not torch.equal(first, comb.combine([], half).offset["w"])
    with pytest.raises(CombinerError, match="floating-point"):
        dp_mean().combine([], {"steps": torch.zeros(3, dtype=torch.int64)})


def test_unseeded_combiners_draw_different_noise() -> None:
    a = GaussianSumMean(clip=1.0, noise_multiplier=1.0, denominator=2)
    b = GaussianSumMean(clip=1.0, noise_multiplier=1.0, denominator=2)
    assert not torch.equal(flat(a.combine([], TEMPLATE).offset),
                           flat(b.combine([], TEMPLATE).offset))


def test_adaptive_clip_takes_the_geometric_step_and_tracks_the_quantile() -> None:
    rule = AdaptiveClip(target_quantile=0.5, learning_rate=0.2, count_stddev=1e-12)
    comb = dp_mean(clip=1.0, denominator=4, adaptive=rule)
    ups = [update(10.0, seed=s) for s in range(4)]  # every norm above the clip: b = 0
    res = comb.combine(ups, TEMPLATE)
    assert res.diagnostics["dp-clip"] == 1.0
    assert comb.clip_norm == pytest.approx(math.exp(0.2 * 0.5), rel=1e-9)
    assert res.diagnostics["dp-next-clip"] == comb.clip_norm
    # norms 1, 2, 3, 4: the clip settles between the 2nd and 3rd (the median's range)
    ups = [update(float(s), seed=s) for s in (1, 2, 3, 4)]
    for _ in range(200):
        comb.combine(ups, TEMPLATE)
    assert 2.0 <= comb.clip_norm <= 3.0


@pytest.mark.parametrize(("kw", "word"), [
    ({"clip": 0.0}, "clip"), ({"noise_multiplier": -1.0}, "noise"),
    ({"denominator": 0}, "denominator"),
])
def test_bad_parameters_are_refused(kw: dict, word: str) -> None:
    with pytest.raises(CombinerError, match=word):
        dp_mean(**kw)
