"""Real data for the clients: scikit-learn's bundled digits (1,797 8x8 images), a fixed
held-out test split for the coordinator, and the rest partitioned over clients IID,
Dirichlet(alpha) or pathologically (k classes per client) by flwr-datasets' partitioners.
Each client keeps 20% of its partition as its own validation split (local accuracy)."""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from client.tasks.api import Arrays, PartitionRequest


class PartitionError(ValueError):
    """The data set cannot be split as asked; the message says why and what to change."""


TEST_FRACTION = 0.2
MIN_DIRICHLET_PARTITION = 10  # examples each Dirichlet partition must get
SPLIT_SEED = 0  # the held-out test set is the same for every run and every seed


@dataclass(frozen=True)
class PartitionSpec:
    scheme: str  # iid | dirichlet | pathological
    num_partitions: int
    seed: int = 0
    alpha: float = 0.5
    classes_per_client: int = 2


@dataclass(frozen=True)
class ClientData:
    x_train: np.ndarray  # (n, 64) float32 in [0, 1]
    y_train: np.ndarray  # (n,) int64
    x_val: np.ndarray
    y_val: np.ndarray

    @property
    def train(self) -> Arrays:  # the task API's view (client/tasks/api.py): no copy
        return Arrays(self.x_train, self.y_train)

    @property
    def val(self) -> Arrays:
        return Arrays(self.x_val, self.y_val)


@lru_cache(maxsize=1)
def digits_split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(x_train, y_train, x_test, y_test): the federation's pool and the held-out test."""
    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32)
    y = y.astype(np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(
        x, y, test_size=TEST_FRACTION, random_state=SPLIT_SEED, stratify=y
    )
    return x_tr, y_tr, x_te, y_te


@lru_cache(maxsize=8)
def _digits_partitioner(spec: PartitionSpec) -> Any:
    _, y, _, _ = digits_split()
    return _partitioner(y, spec)


def _partitioner(labels: np.ndarray, spec: PartitionSpec) -> Any:
    """flwr-datasets' partitioner for the scheme ``spec`` names, over the row indices of
    a data set with these ``labels``; it draws the partitions at its first load."""
    from datasets import Dataset  # heavy imports, only where partitions are made
    from flwr_datasets.partitioner import (
        DirichletPartitioner,
        IidPartitioner,
        PathologicalPartitioner,
    )

    y = np.asarray(labels)
    n = spec.num_partitions
    floor = MIN_DIRICHLET_PARTITION if spec.scheme == "dirichlet" else 1
    if n * floor > len(y):
        raise PartitionError(
            f"{spec.scheme} split of {len(y)} training examples into {n} partitions: "
            f"each needs at least {floor} example(s), so at most {len(y) // floor} "
            "partitions (num-clients) fit; use fewer clients or a larger data set")
    if spec.scheme == "iid":
        partitioner = IidPartitioner(num_partitions=n)
    elif spec.scheme == "dirichlet":
        partitioner = DirichletPartitioner(
            num_partitions=n, partition_by="label", alpha=spec.alpha, seed=spec.seed,
            min_partition_size=MIN_DIRICHLET_PARTITION, self_balancing=False,
        )
    elif spec.scheme == "pathological":
        partitioner = PathologicalPartitioner(
            num_partitions=n, partition_by="label",
            num_classes_per_partition=spec.classes_per_client, seed=spec.seed,
            class_assignment_mode="first-deterministic",
        )
    else:
        raise ValueError(f"unknown partition scheme {spec.scheme!r}")
    partitioner.dataset = Dataset.from_dict({"index": np.arange(len(y)), "label": y})
    return partitioner


def _rows(partitioner: Any, spec: PartitionSpec, partition_id: int) -> np.ndarray:
    """Partition ``partition_id``'s row indices, read as one column (a row-by-row read of
    the partition cost a worker's task a quarter of a second)."""
    try:
        with warnings.catch_warnings():  # one line per failed attempt, each naming n alphas
            warnings.filterwarnings("ignore", message="The specified min_partition_size")
            part = partitioner.load_partition(partition_id).with_format("arrow")
            return part[:]["index"].to_numpy()
    except ValueError as exc:
        if spec.scheme != "dirichlet":
            raise
        raise PartitionError(
            f"dirichlet split (alpha {spec.alpha}) of {len(partitioner.dataset)} training "
            f"examples into {spec.num_partitions} partitions: no draw gave every partition "
            f"{MIN_DIRICHLET_PARTITION} examples ({exc}); use fewer clients or a larger "
            "dirichlet-alpha") from None


def split_by_label(labels: np.ndarray, spec: PartitionSpec) -> tuple[np.ndarray, ...]:
    """The row indices of each of ``spec.num_partitions`` partitions of a data set with
    these ``labels``, by the scheme ``spec`` names (flwr-datasets' partitioners)."""
    partitioner = _partitioner(labels, spec)
    return tuple(_rows(partitioner, spec, i) for i in range(spec.num_partitions))


def partition_rows(labels: np.ndarray, request: PartitionRequest) -> np.ndarray:
    """A task's helper: the row indices of ``request``'s partition of a data set with
    these ``labels``, by the run's scheme (iid, dirichlet, pathological)."""
    spec = PartitionSpec(request.scheme, request.num_partitions, seed=request.seed,
                         alpha=request.alpha, classes_per_client=request.classes_per_client)
    return _rows(_partitioner(labels, spec), spec, request.partition_id)


def load_partition(spec: PartitionSpec, partition_id: int) -> ClientData:
    if not 0 <= partition_id < spec.num_partitions:
        raise ValueError(f"partition-id {partition_id} not in [0, {spec.num_partitions})")
    x, y, _, _ = digits_split()
    idx = _rows(_digits_partitioner(spec), spec, partition_id)
    rng = np.random.default_rng([spec.seed, partition_id])
    idx = rng.permutation(idx)
    n_val = max(1, len(idx) // 5)
    val, train = idx[:n_val], idx[n_val:]
    if len(train) == 0:
        raise PartitionError(
            f"partition {partition_id} of {spec.num_partitions} ({spec.scheme}) has "
            f"{len(idx)} example(s): none left to train on once its validation split is "
            "kept; use fewer clients")
    return ClientData(x[train], y[train], x[val], y[val])


def partition_of(node_config: Mapping[str, Any]) -> tuple[int, int]:
    """(partition-id, num-partitions) from the node config."""
    try:
        return int(node_config["partition-id"]), int(node_config["num-partitions"])
    except KeyError as exc:
        raise ValueError(
            f"node config lacks {exc.args[0]!r}: start the SuperNode with "
            "--node-config 'partition-id=<i> num-partitions=<n>' (or data-dir=<path>)"
        ) from None
