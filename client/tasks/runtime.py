"""What fedmerge does with a task, on a node and on the coordinator: the seeded model with
its frozen part, the tensors that travel, a node's data from its node config, the check
that the coordinator's theta fits this node's model, and the central evaluation."""

from __future__ import annotations

import hashlib
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from client.data import partition_of
from client.tasks.api import DataError, NodeData, PartitionRequest, Task, TaskError

DATA_DIR_KEY = "data-dir"
Params = dict[str, Tensor]
NodeConfig = Mapping[str, Any]


def build_model(task: Task, seed: int) -> nn.Module:
    """The task's model, built under ``seed`` (the same weights everywhere), with every
    parameter that does not travel frozen (requires_grad False)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = task.build_model()
    if not isinstance(model, nn.Module):
        raise TaskError(f"task {task.ref}: build_model returned a {type(model).__name__}, "
                        "not a torch.nn.Module")
    shared = set(task.trainable(model))
    for name, p in model.named_parameters():
        p.requires_grad_(name in shared)
    return model


def shared_params(task: Task, model: nn.Module) -> Params:
    """theta's tensors: the parameters that train and travel (copies, on the CPU)."""
    names = set(task.trainable(model))
    return {n: p.detach().cpu().clone() for n, p in model.named_parameters() if n in names}


def check_theta(task: Task, model: nn.Module, theta: Params) -> None:
    """The coordinator's theta must be exactly this node's travelling tensors, with their
    shapes and dtypes: a node whose task differs (another version of its package, other
    settings) says which tensor and how."""
    own = {n: p for n, p in model.named_parameters() if p.requires_grad}
    missing, unknown = sorted(set(own) - set(theta)), sorted(set(theta) - set(own))
    if missing or unknown:
        raise TaskError(f"task {task.ref}: this node's model does not match the coordinator's: "
                        f"tensor names differ (only here: {missing[:5]}; only there: "
                        f"{unknown[:5]})")
    for name, t in theta.items():
        p = own[name]
        if tuple(p.shape) != tuple(t.shape) or p.dtype != t.dtype:
            raise TaskError(f"task {task.ref}: this node's model does not match the "
                            f"coordinator's: tensor {name!r} is {tuple(p.shape)} {p.dtype} here, "
                            f"{tuple(t.shape)} {t.dtype} there")


def load_params(model: nn.Module, params: Params, offset: Params | None = None) -> nn.Module:
    """Set the named parameters of ``model`` to params (+ offset), in place."""
    own = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in params.items():
            p = own[name]
            p.copy_(value)
            if offset is not None and name in offset:
                p.add_(offset[name])
    return model


@dataclass(frozen=True)
class RunPartition:
    """The run's partition keys (how a simulated data set is split over nodes)."""

    scheme: str = "iid"
    alpha: float = 0.5
    classes_per_client: int = 2
    seed: int = 0


def data_dir_partition_id(directory: Path) -> int:
    """A stable id under 2**28 for a worker that names no partition-id."""
    digest = hashlib.sha256(f"{socket.gethostname()}:{directory}".encode()).hexdigest()
    return int(digest[:7], 16)


def node_data(task: Task, node_config: NodeConfig, partition: RunPartition) -> tuple[int, NodeData]:
    """(partition id, data) of this node: its own ``data-dir`` when the node config names
    one, else its simulated partition of the task's data set."""
    if DATA_DIR_KEY in node_config:
        directory = Path(str(node_config[DATA_DIR_KEY])).expanduser().resolve()
        if not directory.is_dir():
            raise DataError(f"task {task.ref}: data-dir {directory} is not a directory")
        data = task.read_data_dir(directory, partition.seed)
        pid = node_config.get("partition-id")
        return (int(pid) if pid is not None else data_dir_partition_id(directory)), data
    pid, num = partition_of(node_config)
    if not 0 <= pid < num:
        raise ValueError(f"partition-id {pid} not in [0, {num})")
    request = PartitionRequest(pid, num, partition.scheme, partition.alpha,
                               partition.classes_per_client, partition.seed)
    data = task.partition(request)
    if len(data.train) == 0:
        raise DataError(f"task {task.ref}: partition-id {pid} of num-partitions {num} has no "
                        "training examples (too many partitions for the data set?)")
    return pid, data


def metric_keys(task: Task, metrics: Mapping[str, float]) -> None:
    """A task's metrics must hold ``loss`` and its headline."""
    for key in ("loss", task.headline):
        if key not in metrics:
            raise TaskError(f"task {task.ref}: evaluate returned no {key!r} metric "
                            f"(it returned {sorted(metrics)}); headline is {task.headline!r}")


CentralResult = tuple[float | None, float | None, int, dict[str, Any]]


def central_evaluation(task: Task, seed: int) -> Callable[[Params], CentralResult]:
    """theta -> (loss, accuracy or None, examples, metrics) on the task's held-out split;
    ``metrics`` holds every metric, the headline's name and its direction. A task
    without a held-out split gives (None, None, 0, {...})."""
    split = task.central_data()
    model = build_model(task, seed) if split is not None else None
    info = {"headline": task.headline, "higher-is-better": task.higher_is_better}

    def central(params: Params) -> CentralResult:
        if split is None or model is None:
            return None, None, 0, dict(info)
        metrics = task.evaluate(load_params(model, params), split, torch.device("cpu"))
        metric_keys(task, metrics)
        return metrics["loss"], metrics.get("accuracy"), len(split), {**info, **metrics}

    return central
