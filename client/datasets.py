"""Which data a node trains on: one loader per dataset name, plus a worker's own data.

A loader takes the round's ``ClientTask`` and the node's config and returns
(partition id, ClientData). ``central_test_set`` is the coordinator's held-out split.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from client import shakespeare
from client.data import (
    ClientData,
    PartitionSpec,
    digits_split,
    load_partition,
    partition_of,
)
from client.local_data import DATA_DIR_KEY, load_local_data
from client.task import ClientTask

NodeConfig = Mapping[str, Any]
Loader = Callable[[ClientTask, NodeConfig], tuple[int, ClientData]]


def _digits(task: ClientTask, node_config: NodeConfig) -> tuple[int, ClientData]:
    pid, num = partition_of(node_config)
    spec = PartitionSpec(
        task.partition, num, seed=task.seed, alpha=task.dirichlet_alpha,
        classes_per_client=task.classes_per_client,
    )
    return pid, load_partition(spec, pid)


LOADERS: dict[str, Loader] = {
    "digits": _digits,
    "shakespeare": shakespeare.load_client,
}
TEST_SETS: dict[str, Callable[[], tuple[np.ndarray, np.ndarray]]] = {
    "digits": lambda: digits_split()[2:],
    "shakespeare": shakespeare.central_test_set,
}


def load_client_data(task: ClientTask, node_config: NodeConfig) -> tuple[int, ClientData]:
    if DATA_DIR_KEY in node_config:  # a worker with its own data (client/local_data.py)
        return load_local_data(task, node_config)
    if task.dataset not in LOADERS:
        raise ValueError(f"unknown dataset {task.dataset!r}; known: {sorted(LOADERS)}")
    return LOADERS[task.dataset](task, node_config)


def central_test_set(dataset: str) -> tuple[np.ndarray, np.ndarray]:
    """(x, y) the coordinator evaluates theta on."""
    if dataset not in TEST_SETS:
        raise ValueError(f"no held-out test set for dataset {dataset!r}")
    return TEST_SETS[dataset]()
