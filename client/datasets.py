"""Which data a node trains on, through its run's task (client/tasks/): a worker's own
``data-dir``, else its partition of the data set the task knows."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from client.task import ClientTask
from client.tasks.api import Arrays, NodeData
from client.tasks.registry import load_task
from client.tasks.runtime import RunPartition, node_data
from client.tasks.runtime import partition_of as partition_of

NodeConfig = Mapping[str, Any]


def run_partition(task: ClientTask) -> RunPartition:
    return RunPartition(task.partition, task.dirichlet_alpha, task.classes_per_client, task.seed)


def load_client_data(task: ClientTask, node_config: NodeConfig) -> tuple[int, NodeData]:
    """(partition id, data) of this node for the round's task."""
    return node_data(load_task(task.task, task.task_config), node_config, run_partition(task))


def central_test_set(task: str = "digits", task_config: str = "") -> tuple[np.ndarray, np.ndarray]:
    """(x, y) of an array task's held-out split (the coordinator's central evaluation)."""
    split = load_task(task, task_config).central_data()
    if not isinstance(split, Arrays):
        raise ValueError(f"task {task!r} has no held-out split of arrays")
    return split.x, split.y
