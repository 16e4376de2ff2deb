"""aggregation/lora.py on random adapters: the exact merge equals the dense reference
sum_i w_i s B_i A_i; the naive merge (FedAvg over the factors) does not, and its error
is measured."""

from __future__ import annotations

import pytest
import torch

from aggregation.lora import (
    Factors,
    LoraShapeError,
    accumulate,
    dense_offset,
    exact_offset,
    naive_error,
    naive_offset,
)

CASES = [  # (d_out, d_in, rank, clients, transposed)
    (16, 16, 1, 2, False),
    (32, 24, 4, 5, False),
    (8, 40, 8, 3, False),
    (24, 12, 2, 4, True),
]


def clients(d_out: int, d_in: int, rank: int, k: int, transposed: bool, seed: int = 0,
            scale: float = 2.0) -> list[Factors]:
    g = torch.Generator().manual_seed(seed)
    return [Factors(torch.randn(rank, d_in, generator=g, dtype=torch.float64).float(),
                    torch.randn(d_out, rank, generator=g, dtype=torch.float64).float(),
                    scale, transposed) for _ in range(k)]


def reference(fs: list[Factors], w: list[float]) -> torch.Tensor:
    """The dense reference, in float64: sum_i w_i s B_i A_i, one product at a time."""
    out = sum(wi * f.scale * (f.b.double() @ f.a.double()) for f, wi in zip(fs, w, strict=True))
    return out.t() if fs[0].transposed else out


def rel(x: torch.Tensor, ref: torch.Tensor) -> float:
    return float((x.double() - ref).norm() / ref.norm())


@pytest.mark.parametrize(("d_out", "d_in", "rank", "k", "transposed"), CASES)
def test_the_exact_merge_equals_the_dense_reference(d_out, d_in, rank, k, transposed) -> None:
    fs = clients(d_out, d_in, rank, k, transposed)
    w = [float(i + 1) ** 1.5 for i in range(k)]  # unequal, not normalised
    ref = reference(fs, w)
    assert rel(exact_offset(fs, w), ref) < 1e-5
    buf = torch.zeros(fs[0].weight_shape)
    for f, wi in zip(fs, w, strict=True):
        accumulate(buf, f, wi)
    assert rel(buf, ref) < 1e-5


def test_clients_may_have_different_ranks_in_the_exact_merge() -> None:
    fs = clients(12, 10, 2, 2, False) + clients(12, 10, 5, 1, False, seed=1)
    w = [0.2, 0.5, 0.3]
    assert rel(exact_offset(fs, w), reference(fs, w)) < 1e-5
    with pytest.raises(LoraShapeError, match="one rank"):
        naive_offset(fs, w)


@pytest.mark.parametrize(("d_out", "d_in", "rank", "k", "transposed"), CASES)
def test_the_naive_merge_has_an_error_that_is_measured(d_out, d_in, rank, k, transposed) -> None:
    fs = clients(d_out, d_in, rank, k, transposed)
    w = [1.0 + i for i in range(k)]
    err = naive_error({"layer": fs}, w)
    total = sum(w)
    ref = reference(fs, [x / total for x in w])
    naive = naive_offset(fs, w)
    assert err.relative == pytest.approx(rel(naive, ref), rel=1e-4)
    assert err.relative > 1e-2  # cross terms of independent clients: far from zero
    assert err.per_layer["layer"] == pytest.approx(err.relative, rel=1e-6)


def test_one_client_or_identical_clients_make_the_naive_merge_exact() -> None:
    one = clients(10, 6, 3, 1, False)
    assert naive_error({"l": one}, [3.0]).relative < 1e-6
    same = one * 4
    assert naive_error({"l": same}, [1.0, 2.0, 3.0, 4.0]).relative < 1e-6


def test_dense_offset_is_scale_b_a_and_bad_shapes_are_refused() -> None:
    (f,) = clients(5, 7, 2, 1, False, scale=0.5)
    assert torch.allclose(dense_offset(f), 0.5 * f.b @ f.a)
    with pytest.raises(LoraShapeError, match="product"):
        Factors(torch.zeros(3, 7), torch.zeros(5, 2), 1.0)
    with pytest.raises(LoraShapeError, match="different weights"):
        exact_offset([f, *clients(6, 7, 2, 1, False)], [1.0, 1.0])
    with pytest.raises(LoraShapeError, match="buffer"):
        accumulate(torch.zeros(7, 5), f, 1.0)
