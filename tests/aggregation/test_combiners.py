"""aggregation/combiners.py: hand cases, references written here, and properties."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor

from aggregation import (
    ClientUpdate,
    CoordinateMedian,
    FisherWeightedMean,
    Krum,
    OffsetCombiner,
    TrimmedMean,
    WeightedMean,
    make_combiner,
)
from aggregation.combiners import CombinerError, update_norm

DT = torch.float64
SHAPES = {"w": (3, 2), "b": (2,), "s": ()}
TEMPLATE = {k: torch.zeros(s, dtype=DT) for k, s in SHAPES.items()}
PROPS = settings(max_examples=40, deadline=None)

COMBINERS: dict[str, Callable[[], OffsetCombiner]] = {
    "mean": WeightedMean,
    "fisher": FisherWeightedMean,
    "median": CoordinateMedian,
    "trimmed-mean": lambda: TrimmedMean(beta=0.2),
    "krum": lambda: Krum(byzantine=1, num_selected=1),
    "multi-krum": lambda: Krum(byzantine=1, num_selected=None),
}
NON_KRUM = ["mean", "fisher", "median", "trimmed-mean"]


def updates_from_seed(
    seed: int, k: int, *, dtype: torch.dtype = DT, fisher: bool = False
) -> list[ClientUpdate]:
    gen = torch.Generator().manual_seed(seed)
    out = []
    for i in range(k):
        off = {n: torch.randn(s, generator=gen, dtype=DT).to(dtype) for n, s in SHAPES.items()}
        fis = (
            {n: torch.rand(s, generator=gen, dtype=DT).to(dtype) + 0.1 for n, s in SHAPES.items()}
            if fisher
            else None
        )
        weight = float(torch.randint(1, 100, (1,), generator=gen))
        out.append(ClientUpdate(off, weight, fisher=fis, client_id=f"c{i}"))
    return out


def ref_mean(updates: list[ClientUpdate], key: str) -> Tensor:
    """sum_i w_i x_i / sum_i w_i over the clients that sent ``key``, in float64."""
    rows = [(u.offset[key].double(), u.weight) for u in updates if key in u.offset]
    return sum(w * x for x, w in rows) / sum(w for _, w in rows)


# --- WeightedMean -----------------------------------------------------------------------


def test_weighted_mean_hand_case() -> None:
    template = {"w": torch.zeros(2)}
    ups = [
        ClientUpdate({"w": torch.tensor([1.0, 2.0])}, weight=1),
        ClientUpdate({"w": torch.tensor([5.0, -2.0])}, weight=3),
    ]
    out = WeightedMean().combine(ups, template)
    assert out.num_clients == 2
    # (1 * [1, 2] + 3 * [5, -2]) / 4 = [4, -1]
    assert torch.equal(out.offset["w"], torch.tensor([4.0, -1.0]))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_weighted_mean_is_examples_weighted(dtype: torch.dtype) -> None:
    ups = updates_from_seed(0, 5, dtype=dtype)
    template = {k: torch.zeros(s, dtype=dtype) for k, s in SHAPES.items()}
    out = WeightedMean().combine(iter(ups), template)  # any iterable: a stream of replies
    assert out.num_clients == 5 and set(out.offset) == set(SHAPES)
    tol = 1e-6 if dtype == torch.float32 else 1e-12
    for k in SHAPES:
        assert out.offset[k].dtype == dtype
        torch.testing.assert_close(out.offset[k].double(), ref_mean(ups, k), rtol=tol, atol=tol)
    # Not the unweighted mean.
    plain = sum(u.offset["w"].double() for u in ups) / 5
    assert not torch.allclose(out.offset["w"].double(), plain, atol=1e-3)


def test_weighted_mean_reuses_buffers_and_forgets_the_last_round() -> None:
    comb = WeightedMean()
    first = comb.combine(updates_from_seed(1, 4), TEMPLATE)
    ptrs = {k: t.data_ptr() for k, t in first.offset.items()}
    second_ups = updates_from_seed(2, 2)
    second = comb.combine(second_ups, TEMPLATE)
    assert {k: t.data_ptr() for k, t in second.offset.items()} == ptrs  # O(P), reused
    for k in SHAPES:
        torch.testing.assert_close(second.offset[k], ref_mean(second_ups, k))
    # A tensor only the first round sent is gone in the second.
    only_b = [ClientUpdate({"b": torch.ones(2, dtype=DT)}, 2.0)]
    third = comb.combine(only_b, TEMPLATE)
    assert set(third.offset) == {"b"}
    assert torch.equal(third.offset["b"], torch.ones(2, dtype=DT))
    # A new layout gets new, correct buffers.
    template32 = {"z": torch.zeros(4, dtype=torch.float32)}
    ups32 = [
        ClientUpdate({"z": torch.full((4,), 2.0)}, 1.0),
        ClientUpdate({"z": torch.full((4,), 5.0)}, 2.0),
    ]
    fourth = comb.combine(ups32, template32)
    assert set(fourth.offset) == {"z"} and fourth.offset["z"].dtype == torch.float32
    assert torch.equal(fourth.offset["z"], torch.full((4,), 4.0))


def test_template_values_are_not_read() -> None:
    ups = updates_from_seed(3, 5)
    junk = {k: torch.full(s, 1e9, dtype=DT) for k, s in SHAPES.items()}
    for name in COMBINERS:
        a = COMBINERS[name]().combine(ups, TEMPLATE).offset
        b = COMBINERS[name]().combine(ups, junk).offset
        for k in SHAPES:
            torch.testing.assert_close(a[k], b[k], msg=name)


# --- partial sub-models -----------------------------------------------------------------


def partial_updates() -> list[ClientUpdate]:
    full = updates_from_seed(4, 4)
    sends = [{"w", "b"}, {"w"}, {"w", "b"}, {"b"}]  # nobody sends "s"
    return [
        ClientUpdate({k: u.offset[k] for k in keys}, u.weight, client_id=u.client_id)
        for u, keys in zip(full, sends, strict=True)
    ]


def test_partial_weighted_mean_renormalises_per_tensor() -> None:
    ups = partial_updates()
    out = WeightedMean().combine(ups, TEMPLATE)
    assert set(out.offset) == {"w", "b"}  # "s": nobody sent it, so it is absent
    w = [u.weight for u in ups]
    expected_w = (
        w[0] * ups[0].offset["w"] + w[1] * ups[1].offset["w"] + w[2] * ups[2].offset["w"]
    ) / (w[0] + w[1] + w[2])
    expected_b = (
        w[0] * ups[0].offset["b"] + w[2] * ups[2].offset["b"] + w[3] * ups[3].offset["b"]
    ) / (w[0] + w[2] + w[3])
    torch.testing.assert_close(out.offset["w"], expected_w)
    torch.testing.assert_close(out.offset["b"], expected_b)


@pytest.mark.parametrize("name", NON_KRUM)
def test_partial_tensor_absent_when_nobody_sent_it(name: str) -> None:
    out = COMBINERS[name]().combine(partial_updates(), TEMPLATE)
    assert set(out.offset) == {"w", "b"}
    assert out.num_clients == 4


@PROPS
@given(
    seed=st.integers(0, 2**16),
    k=st.integers(3, 7),
    masks=st.lists(st.sets(st.sampled_from(sorted(SHAPES))), min_size=7, max_size=7),
    name=st.sampled_from(NON_KRUM),
)
def test_partial_merge_is_per_tensor_merge_of_senders(
    seed: int, k: int, masks: list[set[str]], name: str
) -> None:
    """Per tensor, a partial merge equals the same combiner over just the clients that sent
    that tensor; with every client sending everything, it equals the full merge."""
    full = updates_from_seed(seed, k, fisher=True)
    partial = [
        ClientUpdate(
            {n: u.offset[n] for n in m},
            u.weight,
            fisher={n: u.fisher[n] for n in m},
            client_id=u.client_id,
        )
        for u, m in zip(full, masks[:k], strict=True)
    ]
    out = COMBINERS[name]().combine(partial, TEMPLATE).offset
    assert set(out) == set().union(*masks[:k])
    for n in SHAPES:
        senders = [u for u, m in zip(full, masks[:k], strict=True) if n in m]
        if not senders:
            continue
        alone = COMBINERS[name]().combine(senders, TEMPLATE).offset[n]
        torch.testing.assert_close(out[n], alone, rtol=1e-12, atol=1e-12)
        if name == "mean":
            torch.testing.assert_close(out[n], ref_mean(senders, n))


# --- clipping ---------------------------------------------------------------------------


def clip_updates() -> list[ClientUpdate]:
    big = {
        "w": torch.full((3, 2), 4.0, dtype=DT),
        "b": torch.full((2,), 4.0, dtype=DT),
        "s": torch.tensor(4.0, dtype=DT),
    }  # norm 4 * 3 = 12 over all 9 numbers
    small = {k: 0.01 * torch.ones(s, dtype=DT) for k, s in SHAPES.items()}  # norm 0.03
    return [ClientUpdate(big, 2.0), ClientUpdate(small, 1.0), ClientUpdate(small, 1.0)]


def test_clip_norm_weighted_mean() -> None:
    ups = clip_updates()
    out = WeightedMean(clip_norm=3.0).combine(ups, TEMPLATE).offset
    # The big update is scaled over the whole model by 3 / 12 to 1.0 per entry;
    # the small ones are under the bound and untouched. (2 * 1 + 0.01 + 0.01) / 4.
    for k in SHAPES:
        torch.testing.assert_close(out[k], torch.full(SHAPES[k], 2.02 / 4, dtype=DT))
    unclipped = WeightedMean().combine(ups, TEMPLATE).offset
    torch.testing.assert_close(unclipped["s"], torch.tensor(8.02 / 4, dtype=DT))


@pytest.mark.parametrize("name", ["fisher", "median", "trimmed-mean"])
def test_clip_norm_applies_to_every_combiner(name: str) -> None:
    ups = clip_updates()
    clipped = [ClientUpdate({k: t * (3.0 / 12.0) for k, t in ups[0].offset.items()}, 2.0), *ups[1:]]
    comb = make_combiner(name, clip_norm=3.0, trim_beta=0.0)
    a = comb.combine(ups, TEMPLATE).offset
    b = make_combiner(name, trim_beta=0.0).combine(clipped, TEMPLATE).offset
    for k in SHAPES:
        torch.testing.assert_close(a[k], b[k])


def test_clip_norm_krum_measures_clipped_distances() -> None:
    # Four honest clients near 0 and one at distance 10: with clip 0.5 everything lies in a
    # ball of radius 0.5 and Krum returns a clipped offset, never longer than the bound.
    gen = torch.Generator().manual_seed(0)
    ups = [
        ClientUpdate({"x": 0.01 * torch.randn(3, generator=gen, dtype=DT)}, 1.0, client_id=f"h{i}")
        for i in range(4)
    ]
    ups.append(ClientUpdate({"x": torch.full((3,), 10.0, dtype=DT)}, 1.0, client_id="bad"))
    out = Krum(byzantine=1, clip_norm=0.5).combine(ups, {"x": torch.zeros(3, dtype=DT)})
    assert out.diagnostics["selected"][0] != "bad"
    assert float(out.offset["x"].norm()) <= 0.5 + 1e-12


# --- properties -------------------------------------------------------------------------


@PROPS
@given(
    seed=st.integers(0, 2**16),
    k=st.integers(5, 8),
    data=st.data(),
    name=st.sampled_from(sorted(COMBINERS)),
)
def test_every_combiner_is_permutation_invariant(
    seed: int, k: int, data: st.DataObject, name: str
) -> None:
    ups = updates_from_seed(seed, k, fisher=(name == "fisher"))
    perm = data.draw(st.permutations(range(k)))
    a = COMBINERS[name]().combine(ups, TEMPLATE).offset
    b = COMBINERS[name]().combine([ups[i] for i in perm], TEMPLATE).offset
    assert set(a) == set(b) == set(SHAPES)
    for n in SHAPES:
        torch.testing.assert_close(a[n], b[n], rtol=1e-12, atol=1e-12)


@PROPS
@given(
    seed=st.integers(0, 2**16),
    k=st.integers(1, 9),
    beta=st.floats(0.0, 0.49),
    name=st.sampled_from(["median", "trimmed-mean"]),
)
def test_robust_combiners_lie_between_min_and_max(
    seed: int, k: int, beta: float, name: str
) -> None:
    ups = updates_from_seed(seed, k)
    comb = CoordinateMedian() if name == "median" else TrimmedMean(beta=beta)
    out = comb.combine(ups, TEMPLATE).offset
    for n in SHAPES:
        stacked = torch.stack([u.offset[n] for u in ups])  # (K, *shape)
        assert (out[n] >= stacked.min(dim=0).values - 1e-12).all()
        assert (out[n] <= stacked.max(dim=0).values + 1e-12).all()


def test_median_and_trimmed_mean_hand_cases() -> None:
    t = {"x": torch.zeros(2)}
    ups = [
        ClientUpdate({"x": torch.tensor(v)}, w)
        for v, w in [([1.0, 9.0], 1), ([4.0, -3.0], 100), ([2.0, 0.0], 1), ([100.0, 5.0], 1)]
    ]
    # Even count: mean of the two middle values; unweighted (the 100 weight is ignored).
    assert torch.equal(CoordinateMedian().combine(ups, t).offset["x"], torch.tensor([3.0, 2.5]))
    # beta 0.25 of 4 drops one value from each end: the same two middle values here.
    assert torch.equal(TrimmedMean(beta=0.25).combine(ups, t).offset["x"], torch.tensor([3.0, 2.5]))
    # beta 0: the plain (unweighted) mean.
    assert torch.equal(
        TrimmedMean(beta=0.0).combine(ups, t).offset["x"], torch.tensor([26.75, 2.75])
    )
    assert torch.equal(CoordinateMedian().combine(ups[:3], t).offset["x"], torch.tensor([2.0, 0.0]))


@PROPS
@given(
    seed=st.integers(0, 2**16),
    honest=st.integers(2, 8),
    sign=st.sampled_from([-1.0, 1.0]),
    huge=st.floats(1e3, 1e12),
)
def test_median_ignores_one_huge_outlier(seed: int, honest: int, sign: float, huge: float) -> None:
    ups = updates_from_seed(seed, honest)
    bad = ClientUpdate(
        {n: torch.full(s, sign * huge, dtype=DT) for n, s in SHAPES.items()},
        weight=1e6,
        client_id="bad",
    )
    out = CoordinateMedian().combine([*ups, bad], TEMPLATE).offset
    for n in SHAPES:
        stacked = torch.stack([u.offset[n] for u in ups])
        assert (out[n] >= stacked.min(dim=0).values).all()
        assert (out[n] <= stacked.max(dim=0).values).all()
    mean = WeightedMean().combine([*ups, bad], TEMPLATE).offset
    assert float(mean["s"].abs()) > 100  # the mean does not: the test has teeth


@PROPS
@given(
    seed=st.integers(0, 2**16),
    byz=st.integers(1, 3),
    extra=st.integers(0, 3),
    hostile=st.integers(0, 3),
    collude=st.booleans(),
    name=st.sampled_from(["krum", "multi"]),
)
def test_krum_picks_honest_clients(
    seed: int, byz: int, extra: int, hostile: int, collude: bool, name: str
) -> None:
    """K >= 2f + 3 clients, at most f of them hostile (far away, maybe all at one point),
    the rest honest (small noise around one point): Krum picks an honest one, multi-Krum
    (m = K - f) only honest ones."""
    hostile = min(hostile, byz)
    k = 2 * byz + 3 + extra
    gen = torch.Generator().manual_seed(seed)
    centre = {n: torch.randn(s, generator=gen, dtype=DT) for n, s in SHAPES.items()}
    ups = []
    for i in range(k - hostile):
        off = {
            n: c + 0.01 * torch.randn(c.shape, generator=gen, dtype=DT) for n, c in centre.items()
        }
        ups.append(ClientUpdate(off, float(i + 1), client_id=f"honest{i}"))
    far = {n: c + 50.0 for n, c in centre.items()}
    for i in range(hostile):
        off = (
            far
            if collude
            else {
                n: c + 50.0 * torch.randn(c.shape, generator=gen, dtype=DT)
                for n, c in centre.items()
            }
        )
        ups.append(ClientUpdate(off, 1000.0, client_id=f"hostile{i}"))
    order = torch.randperm(k, generator=gen).tolist()
    ups = [ups[i] for i in order]
    comb = Krum(byzantine=byz, num_selected=1 if name == "krum" else None)
    out = comb.combine(ups, TEMPLATE)
    selected = out.diagnostics["selected"]
    assert isinstance(selected, list) and out.num_clients == k
    assert all(s.startswith("honest") for s in selected)
    honest = [u for u in ups if u.client_id.startswith("honest")]
    if name == "krum":
        assert len(selected) == 1
        (pick,) = [u for u in ups if u.client_id == selected[0]]
        for n in SHAPES:
            torch.testing.assert_close(out.offset[n], pick.offset[n])
    else:
        assert len(selected) == k - byz
        chosen = [u for u in honest if u.client_id in selected]
        for n in SHAPES:
            torch.testing.assert_close(out.offset[n], ref_mean(chosen, n))


@pytest.mark.parametrize("byz,k", [(1, 4), (2, 6), (0, 2)])
def test_krum_too_few_clients(byz: int, k: int) -> None:
    with pytest.raises(CombinerError, match="krum"):
        Krum(byzantine=byz).combine(updates_from_seed(0, k), TEMPLATE)


def test_krum_rejects_partial_updates() -> None:
    ups = updates_from_seed(0, 5)
    ups[2] = ClientUpdate({"w": ups[2].offset["w"]}, 1.0)
    with pytest.raises(CombinerError):
        Krum(byzantine=1).combine(ups, TEMPLATE)


# --- Fisher-weighted mean ---------------------------------------------------------------


@PROPS
@given(seed=st.integers(0, 2**16), k=st.integers(1, 6), const=st.booleans())
def test_fisher_with_equal_fishers_is_weighted_mean(seed: int, k: int, const: bool) -> None:
    ups = updates_from_seed(seed, k)
    gen = torch.Generator().manual_seed(seed + 1)
    shared = {
        n: (
            torch.full(s, 3.7, dtype=DT) if const else torch.rand(s, generator=gen, dtype=DT) + 0.05
        )
        for n, s in SHAPES.items()
    }
    with_f = [ClientUpdate(u.offset, u.weight, fisher=shared) for u in ups]
    a = FisherWeightedMean().combine(with_f, TEMPLATE).offset
    b = WeightedMean().combine(ups, TEMPLATE).offset
    c = FisherWeightedMean().combine(ups, TEMPLATE).offset  # no Fisher: F = 1
    for n in SHAPES:
        torch.testing.assert_close(a[n], b[n], rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(c[n], b[n], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_fisher_merge_of_quadratic_clients_is_their_joint_minimiser(seed: int) -> None:
    """Clients L_i(x) = 1/2 (x - c_i)^T diag(F_i) (x - c_i) whose Fisher is exactly their
    curvature F_i: theta + (Fisher merge of the offsets c_i - theta) must be
    argmin_x sum_i w_i L_i(x) = sum_i w_i F_i c_i / sum_i w_i F_i, solved here as a dense
    linear system."""
    gen = torch.Generator().manual_seed(seed)
    d = 6
    theta = torch.randn(d, generator=gen, dtype=DT)
    fs = [torch.rand(d, generator=gen, dtype=DT) * 5 + 0.1 for _ in range(2)]
    cs = [torch.randn(d, generator=gen, dtype=DT) * 3 for _ in range(2)]
    ws = [3.0, 11.0]
    ups = [
        ClientUpdate({"x": c - theta}, w, fisher={"x": f})
        for c, f, w in zip(cs, fs, ws, strict=True)
    ]
    merged = theta + FisherWeightedMean().combine(ups, {"x": torch.zeros(d, dtype=DT)}).offset["x"]
    hess = sum(w * torch.diag(f) for f, w in zip(fs, ws, strict=True))
    rhs = sum(w * torch.diag(f) @ c for f, c, w in zip(fs, cs, ws, strict=True))
    torch.testing.assert_close(merged, torch.linalg.solve(hess, rhs), rtol=1e-10, atol=1e-10)
    closed = sum(w * f * c for f, c, w in zip(fs, cs, ws, strict=True)) / sum(
        w * f for f, w in zip(fs, ws, strict=True)
    )
    torch.testing.assert_close(merged, closed, rtol=1e-10, atol=1e-10)
    plain = theta + WeightedMean().combine(ups, {"x": torch.zeros(d, dtype=DT)}).offset["x"]
    assert not torch.allclose(plain, closed, atol=1e-3)  # curvature changes the answer


def test_fisher_mixes_clients_with_and_without_fisher() -> None:
    t = {"x": torch.zeros(2, dtype=DT)}
    ups = [
        ClientUpdate(
            {"x": torch.tensor([1.0, 1.0], dtype=DT)},
            1.0,
            fisher={"x": torch.tensor([3.0, 0.0], dtype=DT)},
        ),
        ClientUpdate({"x": torch.tensor([5.0, 5.0], dtype=DT)}, 1.0),
    ]  # F = 1
    # coordinate 0: (3*1 + 1*5) / (3 + 1) = 2; coordinate 1: (0*1 + 1*5) / (0 + 1) = 5
    out = FisherWeightedMean().combine(ups, t).offset["x"]
    torch.testing.assert_close(out, torch.tensor([2.0, 5.0], dtype=DT))


# --- construction -----------------------------------------------------------------------


def test_make_combiner_names() -> None:
    assert isinstance(make_combiner("mean"), WeightedMean)
    assert isinstance(make_combiner("fisher"), FisherWeightedMean)
    assert isinstance(make_combiner("median"), CoordinateMedian)
    tm = make_combiner("trimmed-mean", trim_beta=0.3)
    assert isinstance(tm, TrimmedMean) and tm.beta == 0.3
    krum = make_combiner("krum", byzantine=2)
    assert isinstance(krum, Krum) and krum.byzantine == 2 and krum.num_selected == 1
    multi = make_combiner("multi-krum", byzantine=2)
    assert isinstance(multi, Krum) and multi.num_selected is None
    assert make_combiner("mean", clip_norm=2.5).clip_norm == 2.5
    assert WeightedMean.streaming and FisherWeightedMean.streaming
    assert not CoordinateMedian.streaming and not Krum.streaming
    with pytest.raises(CombinerError, match="unknown combiner"):
        make_combiner("average")
    with pytest.raises(CombinerError, match="trim-beta"):
        TrimmedMean(beta=0.5)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_fisher_zero_curvature_coordinate_is_finite_in_every_dtype(dtype: torch.dtype) -> None:
    """A coordinate no client has curvature on (F = 0 everywhere, e.g. a dead unit) gets
    offset 0, not 0/0 = NaN; the eps floor must survive float16 (where 1e-8 rounds to 0)."""
    t = {"x": torch.zeros(2, dtype=dtype)}
    ups = [
        ClientUpdate(
            {"x": torch.tensor([1.0, 2.0], dtype=dtype)},
            3.0,
            fisher={"x": torch.tensor([0.0, 1.0], dtype=dtype)},
        )
        for _ in range(2)
    ]
    out = FisherWeightedMean().combine(ups, t).offset["x"]
    assert out.dtype == dtype
    assert torch.equal(out, torch.tensor([0.0, 2.0], dtype=dtype))


def test_update_norm_is_the_float64_norm_over_all_tensors_and_dtypes() -> None:
    gen = torch.Generator().manual_seed(3)
    offset = {
        "big": torch.randn(1_000_000, generator=gen) * 1e-3,  # float32, summed by BLAS
        "w": torch.randn(7, 5, generator=gen, dtype=torch.float64).t(),  # not contiguous
        "h": torch.full((4,), 300.0, dtype=torch.float16),  # 300^2 overflows float16
        "b": torch.full((3,), -2.0, dtype=torch.bfloat16),
        "s": torch.tensor(5.0),
    }
    expected = math.sqrt(sum(float((t.double() ** 2).sum()) for t in offset.values()))
    assert update_norm(offset) == pytest.approx(expected, rel=1e-6)
    assert update_norm({}) == 0.0


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_update_norm_of_a_non_finite_offset_is_not_finite(bad: float) -> None:
    for dtype in (torch.float32, torch.float16):
        x = torch.ones(1000, dtype=dtype)
        x[417] = bad
        assert not math.isfinite(update_norm({"a": torch.ones(3), "x": x}))


def test_clipping_reuses_the_norm_the_validator_measured() -> None:
    """The norm on the update is the one clipping uses: no second read to measure it."""
    offset = {"x": torch.tensor([3.0, 4.0], dtype=DT)}  # true norm 5
    measured = ClientUpdate(offset, 1.0, norm=10.0)  # as if the validator had said 10
    out = WeightedMean(clip_norm=2.0).combine([measured], {"x": torch.zeros(2, dtype=DT)})
    torch.testing.assert_close(out.offset["x"], offset["x"] * 0.2)
    unmeasured = ClientUpdate(offset, 1.0)
    out = WeightedMean(clip_norm=2.0).combine([unmeasured], {"x": torch.zeros(2, dtype=DT)})
    torch.testing.assert_close(out.offset["x"], offset["x"] * 0.4)
