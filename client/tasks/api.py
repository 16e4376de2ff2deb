"""The task API: what a federated task says about itself, and nothing more.

A task is a subclass of ``Task``. It says how to build its model, which tensors train
and travel (the rest stay frozen), how a node gets its data, the loss of a batch, its
evaluation metrics (which one is the headline, and whether higher is better) and,
optionally, a held-out set for the coordinator. fedmerge does the rest: seeding, offsets,
personal mode, FedProx, Fisher, partial sub-models, validation, the store. A run names
its task by an import string (``task = "mypkg.tasks:Classifier"``); its settings
(``task-config``) are validated by the task's pydantic model ``Settings``.

The defaults fit a supervised task on arrays: ``Arrays(x, y)`` splits, cross-entropy
(classification) or mean squared error (regression), minibatch SGD. A task whose data is
not arrays (text, token ids, dicts of tensors) overrides ``prepare`` and ``batches``; one
whose step is not "loss, backward" (gradient accumulation, several losses) overrides
``train_step``. See docs/tasks.md.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterator, Sized
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal, Protocol

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict
from torch import Tensor, nn

Batch = Any  # whatever ``batches`` yields and ``loss`` / ``train_step`` take


class TaskError(ValueError):
    """A task cannot be loaded, configured or used; the message names the task and field."""


class DataError(TaskError):
    """A node's data does not fit its task; the message names the file and the field."""


class NoSettings(BaseModel):
    """The settings of a task that has none: any key is refused."""

    model_config = ConfigDict(extra="forbid", frozen=True)


@dataclass(frozen=True)
class Arrays:
    """A split of a supervised task: features ``x`` (n, ...) and targets ``y`` (n, ...)."""

    x: np.ndarray
    y: np.ndarray

    def __len__(self) -> int:
        return len(self.y)


class NodeData(Protocol):
    """A node's data: a training split and its own validation split (any ``Sized``: its
    length is the node's example count, the weight of its update)."""

    @property
    def train(self) -> Sized: ...
    @property
    def val(self) -> Sized: ...


@dataclass(frozen=True)
class Splits:
    train: Sized
    val: Sized


@dataclass(frozen=True)
class LowRank:
    """How one tensor of theta travels up when a task factorises its offset: the node
    trains and sends the factors ``a`` (r x d_in) and ``b`` (d_out x r), parameters of its
    model outside theta, and the coordinator turns them into the offset
    ``scale * b @ a`` (transposed when the weight is stored (d_in, d_out)). LoRA's form."""

    a: str
    b: str
    scale: float
    transposed: bool = False


@dataclass(frozen=True)
class PartitionRequest:
    """Which part of a data set the task knows a simulated node holds (from the node
    config's ``partition-id`` / ``num-partitions`` and the run's partition keys)."""

    partition_id: int
    num_partitions: int
    scheme: str = "iid"  # iid | dirichlet | pathological
    alpha: float = 0.5  # Dirichlet concentration
    classes_per_client: int = 2  # pathological: classes per node
    seed: int = 0


class Task:
    """Subclass it, set the class attributes you need, override the methods you need."""

    Settings: ClassVar[type[BaseModel]] = NoSettings
    kind: ClassVar[Literal["classification", "regression"]] = "classification"
    headline: ClassVar[str] = "accuracy"  # a key of ``evaluate``'s dict
    higher_is_better: ClassVar[bool] = True
    # fnmatch patterns over parameter names: the tensors that train and travel (all: ()).
    train_tensors: ClassVar[tuple[str, ...]] = ()

    def __init__(self, settings: BaseModel, *, ref: str = "") -> None:
        self.settings = settings
        self.ref = ref or f"{type(self).__module__}:{type(self).__qualname__}"

    # --- what every task says ----------------------------------------------------------
    def build_model(self) -> nn.Module:
        """A fresh model. fedmerge seeds torch around this call, so the same run seed
        gives the same weights on every node and on the coordinator."""
        raise NotImplementedError(f"task {self.ref}: build_model is not defined")

    def partition(self, request: PartitionRequest) -> NodeData:
        """A simulated node's share of a data set the task knows."""
        raise TaskError(f"task {self.ref}: no simulated partitions: give the node a data-dir")

    def read_data_dir(self, directory: Path, seed: int) -> NodeData:
        """A worker's own data, from the node config's ``data-dir``."""
        raise TaskError(f"task {self.ref}: reads no data-dir: give the node a partition-id")

    def central_data(self) -> Sized | None:
        """The coordinator's held-out split, or None (then no central evaluation)."""
        return None

    # --- what travels ------------------------------------------------------------------
    def trainable(self, model: nn.Module) -> list[str]:
        """Names of the parameters that train and travel; the others are frozen."""
        names = [n for n, _ in model.named_parameters()]
        if not self.train_tensors:
            return names
        chosen = [n for n in names if any(fnmatch.fnmatchcase(n, p) for p in self.train_tensors)]
        if not chosen:
            raise TaskError(f"task {self.ref}: train_tensors {list(self.train_tensors)} "
                            f"match no parameter of the model ({names[:8]}...)")
        return chosen

    def low_rank_update(self, model: nn.Module) -> dict[str, LowRank] | None:
        """theta tensor name -> its factors, for a task whose nodes send a low-rank
        factorisation of their offset instead of the offset itself (only the factors
        travel up; the coordinator merges their products exactly); None: the offset
        itself travels, tensor by tensor."""
        return None

    def export(self, theta: dict[str, Tensor], model: nn.Module, directory: Path) -> list[Path]:
        """Write theta in the task's own format under ``directory`` (``model`` is the
        task's model, built under the run's seed); the paths written. Default: none."""
        return []

    # --- the local step ----------------------------------------------------------------
    def place(self, model: nn.Module, device: torch.device) -> nn.Module:
        """Move the model to the node's device (a task may also cast frozen parts)."""
        return model.to(device)

    def prepare(self, split: Sized, device: torch.device) -> Any:
        """A split made ready for ``batches``, once per local training or evaluation."""
        if not isinstance(split, Arrays):
            raise TaskError(f"task {self.ref}: split is a {type(split).__name__}; override "
                            "prepare/batches for data that is not Arrays")
        return torch.from_numpy(split.x).to(device), torch.from_numpy(split.y).to(device)

    def batches(
        self, prepared: Any, batch_size: int, generator: torch.Generator | None
    ) -> Iterator[Batch]:
        """One epoch's minibatches, shuffled by ``generator`` (in order when None)."""
        x, y = prepared
        n = len(y)
        order = (torch.randperm(n, generator=generator).to(y.device) if generator is not None
                 else None)
        for i in range(0, n, batch_size):
            b = order[i : i + batch_size] if order is not None else slice(i, i + batch_size)
            yield x[b], y[b]

    def loss(self, model: nn.Module, batch: Batch) -> Tensor:
        """The mean loss of a batch: cross-entropy, or MSE for a regression task."""
        x, y = batch
        out = model(x)
        if self.kind == "regression":
            return nn.functional.mse_loss(out.reshape(y.shape), y)
        return nn.functional.cross_entropy(out, y)

    def train_step(self, model: nn.Module, batch: Batch) -> tuple[Tensor, int]:
        """Forward and backward of one batch: (its mean loss, detached; its examples).
        fedmerge adds the proximal term's gradient and steps the optimizer."""
        loss = self.loss(model, batch)
        loss.backward()
        return loss.detach(), _examples(batch)

    def optimizer(self, params: list[nn.Parameter], lr: float) -> torch.optim.Optimizer:
        return torch.optim.SGD(params, lr=lr)

    # --- evaluation --------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self, model: nn.Module, split: Sized, device: torch.device) -> dict[str, float]:
        """Metrics of ``model`` on ``split``: ``loss`` (always) and the headline."""
        model.eval()
        total, correct, n = 0.0, 0.0, 0
        for batch in self.batches(self.prepare(split, device), 4096, None):
            x, y = batch
            out = model(x)
            k = len(y)
            if self.kind == "regression":
                total += float(nn.functional.mse_loss(out.reshape(y.shape), y, reduction="sum"))
            else:
                total += float(nn.functional.cross_entropy(out, y, reduction="sum"))
                correct += float((out.argmax(1) == y).sum())
            n += k
        if n == 0:
            raise TaskError(f"task {self.ref}: nothing to evaluate on (an empty split)")
        if self.kind == "regression":
            mse = total / (n * max(1, int(np.prod(split.y.shape[1:]))))
            return {"loss": mse, "mse": mse}
        return {"loss": total / n, "accuracy": correct / n}


def _examples(batch: Batch) -> int:
    if isinstance(batch, (tuple, list)) and batch and hasattr(batch[-1], "__len__"):
        return len(batch[-1])
    if isinstance(batch, dict) and batch:
        return len(next(iter(batch.values())))
    return 1
