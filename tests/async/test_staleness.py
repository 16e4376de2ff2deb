"""s(tau): exact values of each kind, 1 when fresh, never increasing, bad input named."""

from __future__ import annotations

import math

import pytest

from aggregation.staleness import STALENESS_KINDS, StalenessError, StalenessWeight


def test_constant_is_one_at_any_staleness() -> None:
    s = StalenessWeight("constant")
    assert [s(t) for t in (0, 1, 7, 1000)] == [1.0, 1.0, 1.0, 1.0]


def test_polynomial_is_fedbuffs_inverse_power() -> None:
    s = StalenessWeight("polynomial", exponent=0.5)
    assert s(0) == 1.0
    assert s(3) == pytest.approx(0.5, abs=0)  # (1 + 3)^-0.5, exactly representable
    assert s(8) == pytest.approx(1 / 3, rel=1e-15)
    assert StalenessWeight("polynomial", exponent=2.0)(4) == pytest.approx(1 / 25, rel=1e-15)
    assert StalenessWeight("polynomial", exponent=0.0)(9) == 1.0


def test_hinge_is_flat_then_falls() -> None:
    s = StalenessWeight("hinge", exponent=10.0, hinge=4)
    assert [s(t) for t in range(5)] == [1.0] * 5
    assert s(5) == pytest.approx(1 / 11, rel=1e-15)
    assert s(6) == pytest.approx(1 / 21, rel=1e-15)


@pytest.mark.parametrize("kind", STALENESS_KINDS)
def test_fresh_counts_in_full_and_older_never_more(kind) -> None:
    s = StalenessWeight(kind, exponent=0.7, hinge=2)
    values = [s(t) for t in range(50)]
    assert values[0] == 1.0
    assert all(b <= a for a, b in zip(values, values[1:], strict=False))
    assert all(0 < v <= 1 and math.isfinite(v) for v in values)


def test_bad_input_is_named() -> None:
    with pytest.raises(StalenessError, match="not one of"):
        StalenessWeight("linear")  # type: ignore[arg-type]
    with pytest.raises(StalenessError, match="exponent"):
        StalenessWeight("polynomial", exponent=float("nan"))
    with pytest.raises(StalenessError, match="hinge"):
        StalenessWeight("hinge", hinge=-1)
    with pytest.raises(StalenessError, match="tau"):
        StalenessWeight()(-1)
