"""aggregation/robust.py: bucketing, centered clipping and FLTrust, by hand cases and
references written here; the Byzantine budget of Krum and the trimmed mean."""

from __future__ import annotations

import math

import pytest
import torch

from aggregation import (
    Bucketing,
    CenteredClipping,
    ClientUpdate,
    CoordinateMedian,
    FLTrust,
    Krum,
    TrimmedMean,
    WeightedMean,
    make_combiner,
)
from aggregation.combiners import CombinerError, update_norm

DT = torch.float64
SHAPES = {"w": (3, 2), "b": (2,)}
TEMPLATE = {k: torch.zeros(s, dtype=DT) for k, s in SHAPES.items()}


def updates(seed: int, k: int) -> list[ClientUpdate]:
    gen = torch.Generator().manual_seed(seed)
    out = []
    for i in range(k):
        off = {n: torch.randn(s, generator=gen, dtype=DT) for n, s in SHAPES.items()}
        out.append(ClientUpdate(off, float(i + 1), client_id=f"c{i}", norm=update_norm(off)))
    return out


def flat(p: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.cat([p[k].reshape(-1) for k in SHAPES])


def close(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return all(torch.allclose(a[k], b[k], atol=1e-10) for k in SHAPES)


# --- the Byzantine budget --------------------------------------------------------------

def test_krum_counts_rejected_replies_among_its_f() -> None:
    ups = updates(0, 5)
    with pytest.raises(CombinerError, match="needs at least 7"):
        Krum(byzantine=2, num_selected=None).combine(ups, TEMPLATE)
    out = Krum(byzantine=2, num_selected=None).combine(ups, TEMPLATE, rejected=1)
    assert out.diagnostics["selected"] and len(out.diagnostics["selected"]) == 4  # K - f'
    all_out = Krum(byzantine=2, num_selected=None).combine(ups, TEMPLATE, rejected=5)
    assert all_out.dropped == {} and close(all_out.offset,
                                           WeightedMean().combine(ups, TEMPLATE).offset)


def test_the_trimmed_mean_cuts_floor_beta_n_less_the_rejected() -> None:
    rule = TrimmedMean(beta=0.3)
    assert rule.cut(10) == 3 and rule.cut(7, rejected=3) == 0 and rule.cut(8, rejected=2) == 1
    ups = updates(1, 7)
    untrimmed = TrimmedMean(beta=0.0).combine(ups, TEMPLATE).offset
    assert close(rule.combine(ups, TEMPLATE, rejected=3).offset, untrimmed)


# --- bucketing -------------------------------------------------------------------------

def test_buckets_of_one_are_the_plain_rule() -> None:
    ups = updates(2, 7)
    a = Bucketing("median", bucket_size=1).combine(ups, TEMPLATE).offset
    assert close(a, CoordinateMedian().combine(ups, TEMPLATE).offset)


def test_one_bucket_of_everyone_is_the_unweighted_mean() -> None:
    ups = updates(3, 6)
    out = Bucketing("median", bucket_size=6).combine(ups, TEMPLATE)
    mean = {k: torch.stack([u.offset[k] for u in ups]).mean(0) for k in SHAPES}
    assert close(out.offset, mean) and out.diagnostics["buckets"] == 1.0


def test_bucket_means_are_averages_of_a_seeded_shuffle() -> None:
    ups = updates(4, 7)
    rule = Bucketing("trimmed-mean", bucket_size=3, seed=5)
    buckets = rule.buckets(ups)
    assert [len(b.client_id.split("+")) for b in buckets] == [3, 3, 1]
    members = sorted(c for b in buckets for c in b.client_id.split("+"))
    assert members == sorted(u.client_id for u in ups)
    by_id = {u.client_id: u for u in ups}
    for b in buckets:
        ids = b.client_id.split("+")
        expected = torch.stack([flat(by_id[c].offset) for c in ids]).mean(0)
        assert torch.allclose(flat(b.offset), expected)
        assert b.weight == sum(by_id[c].weight for c in ids)
    again = Bucketing("trimmed-mean", bucket_size=3, seed=5).buckets(ups)
    assert [b.client_id for b in again] == [b.client_id for b in buckets]


def test_bucketed_trimmed_mean_cuts_the_hostile_budget_in_buckets() -> None:
    ups = updates(5, 10)
    # floor(0.3 x 10) = 3 hostile, each spoils one of 5 buckets: cut min(3, (5-1)//2) = 2.
    rule = Bucketing("trimmed-mean", bucket_size=2, trim_beta=0.3, seed=1)
    buckets = Bucketing("trimmed-mean", bucket_size=2, seed=1).buckets(ups)
    stacked = torch.stack([flat(b.offset) for b in buckets]).sort(0).values
    assert torch.allclose(flat(rule.combine(ups, TEMPLATE).offset), stacked[2:3].mean(0))


def test_bucketed_krum_passes_the_budget_on_and_names_clients_left_out() -> None:
    ups = updates(6, 8)  # 4 buckets of 2
    with pytest.raises(CombinerError, match="needs at least 5"):
        Bucketing("krum", bucket_size=2, byzantine=1).combine(ups, TEMPLATE)
    out = Bucketing("krum", bucket_size=2, byzantine=1).combine(ups, TEMPLATE, rejected=1)
    assert len(out.dropped) == 6  # Krum keeps one bucket: its 2 clients are merged
    assert all("in a bucket not selected by krum" in r for r in out.dropped.values())
    assert set(out.dropped) < {u.client_id for u in ups}


def test_bucketing_refuses_partial_updates_and_bad_sizes() -> None:
    ups = updates(7, 4)
    partial = ClientUpdate({"w": ups[0].offset["w"]}, 1.0, client_id="p")
    with pytest.raises(CombinerError, match="every tensor"):
        Bucketing("median").combine([*ups, partial], TEMPLATE)
    with pytest.raises(CombinerError, match="bucket-size"):
        Bucketing("median", bucket_size=0)
    with pytest.raises(CombinerError, match="unknown rule"):
        Bucketing("mean")


# --- centered clipping -----------------------------------------------------------------

def test_centered_clipping_with_a_wide_radius_is_the_weighted_mean() -> None:
    ups = updates(8, 5)
    out = CenteredClipping(tau=1e9, iterations=1).combine(ups, TEMPLATE).offset
    assert close(out, WeightedMean().combine(ups, TEMPLATE).offset)


def test_one_huge_offset_moves_the_center_by_at_most_its_share_of_tau() -> None:
    ups = updates(9, 5)
    huge = {k: 1e6 * torch.ones(s, dtype=DT) for k, s in SHAPES.items()}
    bad = ClientUpdate(huge, 2.0, client_id="bad", norm=update_norm(huge))
    tau = 0.5
    honest = CenteredClipping(tau=tau, iterations=1).combine(ups, TEMPLATE).offset
    attacked = CenteredClipping(tau=tau, iterations=1).combine([*ups, bad], TEMPLATE).offset
    total = sum(u.weight for u in ups) + bad.weight
    # honest terms are rescaled by W/(W + w_bad); the hostile term is at most w_bad tau / W
    shrink = {k: t * (total - bad.weight) / total for k, t in honest.items()}
    gap = update_norm({k: attacked[k] - shrink[k] for k in SHAPES})
    assert gap <= bad.weight * tau / total + 1e-9


def test_centered_clipping_starts_from_the_previous_rounds_result() -> None:
    rule = CenteredClipping(tau=1e-3, iterations=1)
    first = {k: t.clone() for k, t in rule.combine(updates(10, 4), TEMPLATE).offset.items()}
    second = rule.combine(updates(11, 4), TEMPLATE).offset
    # a tiny radius: each round moves the center by at most tau
    assert update_norm(first) <= 1e-3 + 1e-12
    assert update_norm({k: second[k] - first[k] for k in SHAPES}) <= 1e-3 + 1e-12
    assert not close(second, first)


def test_centered_clipping_automatic_radius_is_the_median_distance() -> None:
    ups = updates(12, 5)
    out = CenteredClipping(iterations=1).combine(ups, TEMPLATE)
    median = sorted(u.norm for u in ups)[2]  # the first center is zero
    assert math.isclose(out.diagnostics["radius"], median)
    assert out.diagnostics["clipped"] == 2.0


# --- FLTrust ---------------------------------------------------------------------------

def server(g0: dict[str, torch.Tensor]):
    return lambda theta: {k: t.clone() for k, t in g0.items()}


def test_fltrust_rescales_to_the_server_norm_and_weights_by_relu_cosine() -> None:
    gen = torch.Generator().manual_seed(13)
    g0 = {k: torch.randn(s, generator=gen, dtype=DT) for k, s in SHAPES.items()}
    ups = updates(14, 4)
    out = FLTrust(server(g0)).combine(ups, TEMPLATE)
    g = flat(g0)
    num, den = torch.zeros_like(g), 0.0
    for u in ups:
        x = flat(u.offset)
        ts = max(float(x @ g / (x.norm() * g.norm())), 0.0)
        num += ts * g.norm() / x.norm() * x
        den += ts
    assert den > 0 and torch.allclose(flat(out.offset), num / den)
    negative = {u.client_id for u in ups if float(flat(u.offset) @ g) <= 0}
    assert set(out.dropped) == negative
    assert all("trust score 0" in r for r in out.dropped.values())


def test_fltrust_ignores_the_size_of_an_aligned_offset() -> None:
    g0 = {k: torch.ones(s, dtype=DT) for k, s in SHAPES.items()}
    big = {k: 1e6 * torch.ones(s, dtype=DT) for k, s in SHAPES.items()}
    out = FLTrust(server(g0)).combine([ClientUpdate(big, 1.0, client_id="a")], TEMPLATE)
    assert close(out.offset, g0)


def test_fltrust_merges_nothing_when_every_offset_points_away() -> None:
    g0 = {k: torch.ones(s, dtype=DT) for k, s in SHAPES.items()}
    away = [ClientUpdate({k: -t for k, t in g0.items()}, 1.0, client_id=f"c{i}")
            for i in range(3)]
    out = FLTrust(server(g0)).combine(away, TEMPLATE)
    assert out.offset == {} and out.num_clients == 3 and len(out.dropped) == 3


def test_make_combiner_names_the_new_rules() -> None:
    assert isinstance(make_combiner("bucketed-median"), Bucketing)
    assert isinstance(make_combiner("centered-clipping", cc_tau=2.0), CenteredClipping)
    with pytest.raises(CombinerError, match="root data"):
        make_combiner("fltrust")


def test_fltrust_median_scale_rescales_to_the_rounds_median_client_norm() -> None:
    gen = torch.Generator().manual_seed(15)
    g0 = {k: torch.randn(s, generator=gen, dtype=DT) for k, s in SHAPES.items()}
    ups = updates(16, 5)
    g = flat(g0)
    paper = FLTrust(server(g0)).combine(ups, TEMPLATE)
    out = FLTrust(server(g0), scale="median").combine(ups, TEMPLATE)
    median = sorted(float(flat(u.offset).norm()) for u in ups)[2]
    # the same direction and trust scores as the paper's rule, at the clients' median norm
    assert torch.allclose(flat(out.offset), flat(paper.offset) * median / float(g.norm()))
    assert out.dropped == paper.dropped
    assert math.isclose(out.diagnostics["scale"], median)


def test_fltrust_median_scale_is_not_pulled_out_of_the_honest_norms_by_a_minority() -> None:
    g0 = {k: torch.ones(s, dtype=DT) for k, s in SHAPES.items()}
    honest = [ClientUpdate({k: c * torch.ones(s, dtype=DT) for k, s in SHAPES.items()}, 1.0,
                           client_id=f"h{i}") for i, c in enumerate([1.0, 2.0, 3.0])]
    tiny = [ClientUpdate({k: 1e-6 * torch.ones(s, dtype=DT) for k, s in SHAPES.items()}, 1.0,
                         client_id=f"t{i}") for i in range(2)]
    huge = [ClientUpdate({k: 1e6 * torch.ones(s, dtype=DT) for k, s in SHAPES.items()}, 1.0,
                         client_id=f"x{i}") for i in range(2)]
    unit = float(flat(g0).norm())  # the norm of an all-ones offset
    for hostile in (tiny, huge):
        out = FLTrust(server(g0), scale="median").combine(honest + hostile, TEMPLATE)
        assert unit <= out.diagnostics["scale"] <= 3 * unit
        assert math.isclose(float(flat(out.offset).norm()), out.diagnostics["scale"])


def test_fltrust_refuses_an_unknown_scale() -> None:
    with pytest.raises(CombinerError, match="fltrust-scale"):
        FLTrust(server(TEMPLATE), scale="mean")
    assert make_combiner("fltrust", server_update=server(TEMPLATE),
                         fltrust_scale="median").scale == "median"


def test_fltrust_median_scale_with_a_budget_resists_small_norm_attackers() -> None:
    g0 = {k: torch.ones(s, dtype=DT) for k, s in SHAPES.items()}
    unit = float(flat(g0).norm())
    honest = [ClientUpdate({k: c * torch.ones(s, dtype=DT) for k, s in SHAPES.items()}, 1.0,
                           client_id=f"h{i}") for i, c in enumerate([1.0, 2.0, 3.0, 4.0, 5.0])]
    tiny = [ClientUpdate({k: -1e-6 * torch.ones(s, dtype=DT) for k, s in SHAPES.items()}, 1.0,
                         client_id=f"t{i}") for i in range(2)]
    plain = FLTrust(server(g0), scale="median").combine(honest + tiny, TEMPLATE)
    robust = FLTrust(server(g0), scale="median", byzantine=2).combine(honest + tiny, TEMPLATE)
    assert math.isclose(plain.diagnostics["scale"], 2 * unit)  # pulled below the honest 3
    assert math.isclose(robust.diagnostics["scale"], 3 * unit)  # 5th of 7: the honest median
    assert set(robust.dropped) == {"t0", "t1"}
