"""How theta is evaluated: centrally, on the coordinator's held-out split, and
federatedly, from the clients' evaluate replies, each weighted by examples once, here."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch

from client.metrics import (
    EVAL_ACC,
    EVAL_LOSS,
    EVAL_NUM_EXAMPLES,
    EVAL_PERSONAL_ACC,
    EVAL_PERSONAL_LOSS,
    PARTITION_ID,
    PERSONAL_ACC,
    PERSONAL_LOSS,
)
from client.task import NUM_EXAMPLES
from client.tasks.registry import load_task
from client.tasks.runtime import central_evaluation
from coordinator.store import EvaluationRecord

Row = Mapping[str, float]


class CentralEvaluation:
    """theta -> the run's task's metrics on its held-out split, as a "central"
    EvaluationRecord (loss and accuracy where the task has them; every metric, the
    headline's name and its direction in ``metrics``). The model and split are built once."""

    def __init__(self, task: str, task_config: str = "", *, seed: int = 0) -> None:
        self._evaluate = central_evaluation(load_task(task, task_config), seed)

    def __call__(self, params: dict[str, torch.Tensor]) -> EvaluationRecord:
        loss, acc, n, metrics = self._evaluate(params)
        return EvaluationRecord("central", loss, acc, n, metrics)


def headline_of(
    metrics: Mapping[str, object] | None, accuracy: float | None
) -> tuple[str, float | None]:
    """A central evaluation's headline metric (the task names it in ``metrics``) and its
    value; accuracy for records written before tasks had headlines."""
    metrics = metrics or {}
    name = str(metrics.get("headline", "accuracy"))
    value = metrics.get(name, accuracy if name == "accuracy" else None)
    return name, None if value is None else float(value)  # type: ignore[arg-type]


def examples_weighted(rows: Iterable[Row], key: str) -> tuple[float | None, float]:
    """The examples-weighted mean of ``key`` over the rows that have it (None if none
    does), and their total weight."""
    pairs = [(r[key], r.get(NUM_EXAMPLES, 1.0)) for r in rows if key in r]
    total = sum(w for _, w in pairs)
    if not pairs or total <= 0:
        return None, 0.0
    return sum(v * w for v, w in pairs) / total, total


def weighted_means(rows: list[Row], keys: Iterable[str]) -> dict[str, float]:
    """The examples-weighted mean of each of ``keys`` that some row has."""
    means = {key: examples_weighted(rows, key)[0] for key in keys}
    return {key: value for key, value in means.items() if value is not None}


def federated_records(clients: list[Row]) -> list[EvaluationRecord]:
    """The clients' evaluations of theta ("federated", with each client's row under
    "clients" by partition id) and of each theta + theta_i ("personalized"), by examples.
    A task without accuracy (a regression) is recorded by its loss alone."""
    out = []
    loss, n_loss = examples_weighted(clients, EVAL_LOSS)
    acc, n_acc = examples_weighted(clients, EVAL_ACC)
    if acc is not None or loss is not None:
        per_client = {str(int(c.get(PARTITION_ID, i))): dict(c) for i, c in enumerate(clients)}
        n = int(n_acc if acc is not None else n_loss)
        out.append(EvaluationRecord("federated", loss, acc, n, {"clients": per_client}))
    loss, n_loss = examples_weighted(clients, PERSONAL_LOSS)
    acc, n_acc = examples_weighted(clients, PERSONAL_ACC)
    if acc is not None or loss is not None:
        out.append(EvaluationRecord("personalized", loss, acc,
                                    int(n_acc if acc is not None else n_loss)))
    return out


def folded_row(train_metrics: Row) -> dict[str, float] | None:
    """A train reply's folded evaluation (federated-evaluation "folded": the client's
    evaluation of the theta it received, made before training) as the row its evaluate
    reply would have been; None if the reply carries none."""
    if EVAL_NUM_EXAMPLES not in train_metrics:
        return None
    renamed = {EVAL_NUM_EXAMPLES: NUM_EXAMPLES, EVAL_PERSONAL_ACC: PERSONAL_ACC,
               EVAL_PERSONAL_LOSS: PERSONAL_LOSS}
    row = {renamed.get(k, k): float(v) for k, v in train_metrics.items()
           if k.startswith("eval-")}
    if PARTITION_ID in train_metrics:
        row[PARTITION_ID] = float(train_metrics[PARTITION_ID])
    return row
