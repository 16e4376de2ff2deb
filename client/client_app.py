"""The Flower ClientApp: receive theta, train the offset theta_i, reply with it.

What to do comes from the round's ConfigRecord (``ClientTask``): among it the run's task
(client/tasks/), which builds the model and says which tensors travel, reads this node's
data from its node config (``partition-id``/``num-partitions``, injected by the
simulation engine or given to a SuperNode with --node-config, or ``data-dir``), and
measures the metrics. In ``personal`` mode the offset lives in ``context.state``
between rounds.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from client import metrics as m
from client.datasets import run_partition
from client.packed import PACKED_NAME, is_packed, packed_record, unpack
from client.slowdown import pause
from client.task import (
    FISHER_KEY,
    MANIFEST_KEY,
    METRICS_KEY,
    NUM_EXAMPLES,
    OFFSET_KEY,
    ClientTask,
)
from client.tasks.api import Arrays, Task, TaskError
from client.tasks.registry import load_task
from client.tasks.runtime import build_model, check_theta, load_params, metric_keys, node_data
from client.threads import task_threads
from client.trainer import diagonal_fisher, fit_offset, pick_device

OFFSET_STATE_KEY = "personal-offset"

app = ClientApp()


def _trainable(context: Context, theta: dict[str, torch.Tensor]) -> list[str] | None:
    """Node config ``train-tensors``: comma-separated tensor names or name prefixes
    ("fc2" is fc2.weight and fc2.bias). This worker trains and sends only those."""
    spec = str(context.node_config.get("train-tensors", "")).strip()
    if not spec:
        return None
    wanted = [w.strip() for w in spec.split(",") if w.strip()]
    names = list(theta)
    chosen = [n for n in names if any(n == w or n.startswith(w + ".") for w in wanted)]
    unmatched = [w for w in wanted if not any(n == w or n.startswith(w + ".") for n in names)]
    if unmatched or not chosen:
        raise ValueError(f"train-tensors {unmatched or wanted} match no tensor of {names}")
    return chosen


def _low_rank_factors(task: Task, model: torch.nn.Module,
                      trainable: list[str] | None) -> list[str] | None:
    """The factors a node trains and sends instead of theta's tensors, for a task whose
    offset travels in low-rank form (LoRA's A and B); None for any other task."""
    layout = task.low_rank_update(model)
    if layout is None:
        return None
    if trainable is not None:
        raise TaskError(f"task {task.ref}: node config train-tensors does not apply to a "
                        "low-rank update (its factors always travel whole)")
    return [name for f in layout.values() for name in (f.a, f.b)]


def _stored_offset(context: Context) -> dict[str, torch.Tensor] | None:
    if OFFSET_STATE_KEY not in context.state:
        return None
    return context.state[OFFSET_STATE_KEY].to_torch_state_dict()


def _measure(task: Task, model: torch.nn.Module, split, device: torch.device,
             prefix: str) -> dict[str, float]:
    """The task's metrics as reply metrics: ``<prefix>-<name>``, plus the short names the
    coordinator aggregates (``<prefix>-acc`` for accuracy)."""
    metrics = task.evaluate(model, split, device)
    metric_keys(task, metrics)
    out = {f"{prefix}-{k}": float(v) for k, v in metrics.items()}
    if "accuracy" in metrics:
        out[f"{prefix}-acc"] = float(metrics["accuracy"])
    return out


def _tensors(record: ArrayRecord) -> dict[str, torch.Tensor]:
    """theta as the coordinator sent it: packed (ours) or one Array per tensor (any other
    ServerApp, e.g. Flower's own strategies)."""
    return unpack(record[PACKED_NAME]) if is_packed(record) else record.to_torch_state_dict()


def _reply_record(msg: Message) -> Callable[[dict[str, torch.Tensor]], ArrayRecord]:
    """How the reply's tensors travel: as the request's theta did, so that our coordinator
    gets one packed Array and a ServerApp that sends per-tensor records gets those."""
    return packed_record if is_packed(msg.content[OFFSET_KEY]) else ArrayRecord


def _setup(msg: Message, context: Context):
    run = ClientTask.from_config(msg.content["config"])
    task = load_task(run.task, run.task_config)
    pid, data = node_data(task, context.node_config, run_partition(run))
    theta = _tensors(msg.content[OFFSET_KEY])
    model = build_model(task, run.seed)
    check_theta(task, model, theta)
    return run, task, pid, data, theta, model


def _folded_personal(task: Task, model: torch.nn.Module, theta, split, device: torch.device,
                     context: Context, personal: bool) -> dict[str, float]:
    """Folded evaluation, personal mode: what the evaluate reply says of theta + the kept
    theta_i (under EVAL_PERSONAL_*, before training). ``model`` is left holding theta."""
    offset = _stored_offset(context)
    if not personal or offset is None:
        return {}
    own = _measure(task, load_params(model, theta, offset), split, device, "eval-personal")
    load_params(model, theta)
    return {k: v for k, v in own.items() if k in (m.EVAL_PERSONAL_ACC, m.EVAL_PERSONAL_LOSS)}


@app.train()
def train(msg: Message, context: Context) -> Message:
    run, task, pid, data, theta, model = _setup(msg, context)
    with task_threads(context.node_config, model):
        return _train(msg, context, run, task, pid, data, theta, model)


def _train(msg: Message, context: Context, run: ClientTask, task: Task, pid: int, data,
           theta, model: torch.nn.Module) -> Message:
    server_round = int(msg.content["config"]["server-round"])
    device = pick_device(run.device)
    model = task.place(model, device)
    personal = run.mode == "personal"
    trainable = _trainable(context, theta)
    sent = _low_rank_factors(task, model, trainable)

    metrics: dict[str, float | int] = {}
    shared = _measure(task, load_params(model, theta), data.val, device, "eval")
    metrics.update({"shared" + k[len("eval"):]: v for k, v in shared.items()
                    if k in (m.EVAL_ACC, m.EVAL_LOSS)})
    if run.federated_evaluation == "folded":  # this evaluation of theta, in full
        metrics.update(shared)
        metrics.update(_folded_personal(task, model, theta, data.val, device, context,
                                        personal))
        metrics[m.EVAL_NUM_EXAMPLES] = len(data.val)
    result = fit_offset(
        task, model, theta, data.train,
        epochs=run.local_epochs, lr=run.local_lr, batch_size=run.batch_size,
        proximal=run.proximal_coefficient, device=device,
        seed=int(np.random.SeedSequence([run.seed, pid, server_round]).generate_state(1)[0]),
        warm_offset=_stored_offset(context) if personal else None,
        trainable=sent or trainable,
    )
    slept = pause(context.node_config, result.seconds)  # node config slowdown: testing aid
    if personal:
        context.state[OFFSET_STATE_KEY] = ArrayRecord(result.offset)
        own = _measure(task, model, data.val, device, "personal")
        metrics.update({k: v for k, v in own.items() if k in (m.PERSONAL_ACC, m.PERSONAL_LOSS)})
    metrics.update({
        NUM_EXAMPLES: len(data.train),
        m.TRAIN_LOSS: result.loss,
        m.TRAIN_SECONDS: result.seconds + slept,
        m.PARTITION_ID: pid,
        m.DEVICE_CUDA: int(device.type == "cuda"),
    })
    record = _reply_record(msg)
    content = RecordDict({OFFSET_KEY: record(result.offset), METRICS_KEY: MetricRecord(metrics)})
    if trainable is not None:
        content[MANIFEST_KEY] = ConfigRecord({"tensors": trainable})
    if run.combiner == "fisher":
        if not isinstance(data.train, Arrays):
            raise TaskError(f"task {task.ref}: combiner fisher needs a task whose data are "
                            "Arrays (x, y)")
        fisher = diagonal_fisher(
            model, data.train.x, data.train.y, device, names=trainable or list(theta),
            seed=run.seed, task=task,
        )
        content[FISHER_KEY] = record(fisher)
    return Message(content=content, reply_to=msg)


@app.evaluate()
def evaluate_shared(msg: Message, context: Context) -> Message:
    """Local validation metrics of theta, and in personal mode of theta + theta_i."""
    run, task, pid, data, theta, model = _setup(msg, context)
    with task_threads(context.node_config, model):
        return _evaluate(msg, context, run, task, pid, data, theta, model)


def _evaluate(msg: Message, context: Context, run: ClientTask, task: Task, pid: int, data,
              theta, model: torch.nn.Module) -> Message:
    device = pick_device(run.device)
    model = load_params(task.place(model, device), theta)
    metrics: dict[str, float | int] = {
        **_measure(task, model, data.val, device, "eval"),
        NUM_EXAMPLES: len(data.val), m.PARTITION_ID: pid,
    }
    offset = _stored_offset(context)
    if run.mode == "personal" and offset is not None:
        model = load_params(model, theta, offset)
        own = _measure(task, model, data.val, device, "personal")
        metrics.update({k: v for k, v in own.items() if k in (m.PERSONAL_ACC, m.PERSONAL_LOSS)})
    return Message(content=RecordDict({METRICS_KEY: MetricRecord(metrics)}), reply_to=msg)
