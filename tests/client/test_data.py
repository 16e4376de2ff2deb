"""client/data.py: the held-out split and the three partition schemes, on real digits.

Digits has no two identical images, so an image's bytes identify it: a partition's
examples are compared as sets of rows.
"""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest
from sklearn.datasets import load_digits

from client import data
from client.data import PartitionError, PartitionSpec, digits_split, load_partition

N = 10


def rows(x: np.ndarray) -> Counter[bytes]:
    return Counter(r.tobytes() for r in x)


def partition_rows(spec: PartitionSpec, pid: int) -> Counter[bytes]:
    part = load_partition(spec, pid)
    return rows(part.x_train) + rows(part.x_val)


def labels(spec: PartitionSpec, pid: int) -> np.ndarray:
    part = load_partition(spec, pid)
    return np.concatenate([part.y_train, part.y_val])


def label_histograms(spec: PartitionSpec) -> np.ndarray:
    return np.stack([np.bincount(labels(spec, i), minlength=10) for i in range(N)])  # (N, 10)


def fresh(spec: PartitionSpec) -> np.ndarray:
    """The spec's label histograms computed anew, not from the partition cache."""
    data._digits_partitioner.cache_clear()
    return label_histograms(spec)


def test_the_test_split_and_the_pool_split_digits_without_overlap() -> None:
    x_pool, y_pool, x_test, y_test = digits_split()
    x_all, _ = load_digits(return_X_y=True)
    all_rows = rows((x_all / 16.0).astype(np.float32))
    assert max(all_rows.values()) == 1  # every image is unique: rows identify examples
    pool, test = rows(x_pool), rows(x_test)
    assert not set(pool) & set(test)
    assert pool + test == all_rows
    assert len(y_test) == math.ceil(0.2 * len(x_all)) and len(y_pool) == len(x_all) - len(y_test)
    assert x_pool.dtype == np.float32 and y_pool.dtype == np.int64
    assert x_pool.min() >= 0.0 and x_pool.max() <= 1.0
    # Stratified: every class in the test split, in about its overall proportion.
    assert np.all(np.abs(np.bincount(y_test) / len(y_test) - 0.1) < 0.02)


@pytest.mark.parametrize("scheme", ["iid", "dirichlet", "pathological"])
def test_partitions_are_disjoint_and_cover_the_pool(scheme: str) -> None:
    spec = PartitionSpec(scheme, N, seed=3, alpha=1.0, classes_per_client=2)
    pool = rows(digits_split()[0])
    union: Counter[bytes] = Counter()
    for pid in range(N):
        part = partition_rows(spec, pid)
        assert not set(part) & set(union), f"partition {pid} overlaps an earlier one"
        union += part
    assert union == pool


def test_each_client_keeps_a_fifth_of_its_partition_for_validation() -> None:
    spec = PartitionSpec("iid", N)
    for pid in range(N):
        part = load_partition(spec, pid)
        total = len(part.y_train) + len(part.y_val)
        assert len(part.y_val) == max(1, total // 5)
        assert not set(rows(part.x_train)) & set(rows(part.x_val))


def test_iid_partitions_are_even() -> None:
    spec = PartitionSpec("iid", N)
    sizes = [len(labels(spec, i)) for i in range(N)]
    assert sum(sizes) == len(digits_split()[1])
    assert max(sizes) - min(sizes) <= 1


def test_dirichlet_is_reproducible_for_a_seed_and_differs_across_seeds() -> None:
    a = PartitionSpec("dirichlet", N, seed=0, alpha=0.5)
    first = fresh(a)
    np.testing.assert_array_equal(fresh(a), first)
    assert not np.array_equal(fresh(PartitionSpec("dirichlet", N, seed=1, alpha=0.5)), first)
    # Skewed labels: far from the IID histogram.
    iid = fresh(PartitionSpec("iid", N))
    assert np.abs(first - first.sum(1, keepdims=True) / 10).sum() > 3 * np.abs(
        iid - iid.sum(1, keepdims=True) / 10
    ).sum()


@pytest.mark.parametrize("k", [1, 2, 3])
def test_pathological_gives_each_client_exactly_k_classes(k: int) -> None:
    spec = PartitionSpec("pathological", N, seed=0, classes_per_client=k)
    for pid in range(N):
        assert len(np.unique(labels(spec, pid))) == k, f"partition {pid}"


def test_a_partition_id_outside_the_range_is_refused() -> None:
    with pytest.raises(ValueError, match="partition-id"):
        load_partition(PartitionSpec("iid", N), N)
    with pytest.raises(ValueError, match="scheme"):
        load_partition(PartitionSpec("nope", N), 0)


def test_too_many_dirichlet_partitions_fail_at_once_with_what_to_change() -> None:
    n_train = len(digits_split()[1])
    with pytest.raises(PartitionError, match="at most 143 partitions") as exc:
        load_partition(PartitionSpec("dirichlet", 1000, alpha=0.1), 0)
    assert f"{n_train} training examples" in str(exc.value)


def test_a_dirichlet_draw_that_cannot_fill_every_partition_names_the_fix() -> None:
    # 140 partitions of >= 10 examples fit the data (1,437), but alpha 0.01 draws almost
    # every example of a class into one partition
    with pytest.raises(PartitionError, match="larger dirichlet-alpha"):
        load_partition(PartitionSpec("dirichlet", 140, alpha=0.01), 0)


def test_a_partition_with_nothing_to_train_on_says_so() -> None:
    # iid over 1,000 partitions: each gets one or two examples, one goes to validation
    spec = PartitionSpec("iid", 1000)
    empty = [_empty(spec, pid) for pid in range(1000)]
    assert any(empty) and not all(empty)


def _empty(spec: PartitionSpec, pid: int) -> bool:
    try:
        assert len(load_partition(spec, pid).y_train) > 0
    except PartitionError as exc:
        assert f"partition {pid} of 1000" in str(exc) and "none left to train on" in str(exc)
        return True
    return False
