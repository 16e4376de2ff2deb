"""The Flower ClientApp: receive theta, train the offset theta_i, reply with it.

Which data a node holds comes from its node config (``partition-id`` and
``num-partitions``, injected by the simulation engine or given to a SuperNode with
--node-config); what to do comes from the round's ConfigRecord (``ClientTask``).
In ``personal`` mode the offset lives in ``context.state`` between rounds.
"""

from __future__ import annotations

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from client import metrics as m
from client.datasets import load_client_data
from client.models import build_model
from client.task import (
    FISHER_KEY,
    MANIFEST_KEY,
    METRICS_KEY,
    NUM_EXAMPLES,
    OFFSET_KEY,
    ClientTask,
)
from client.trainer import diagonal_fisher, evaluate, load_params, pick_device, train_offset

OFFSET_STATE_KEY = "personal-offset"

app = ClientApp()


def _trainable(context: Context, model: torch.nn.Module) -> list[str] | None:
    """Node config ``train-tensors``: comma-separated tensor names or name prefixes
    ("fc2" is fc2.weight and fc2.bias). This worker trains and sends only those."""
    spec = str(context.node_config.get("train-tensors", "")).strip()
    if not spec:
        return None
    wanted = [w.strip() for w in spec.split(",") if w.strip()]
    names = [n for n, _ in model.named_parameters()]
    chosen = [n for n in names if any(n == w or n.startswith(w + ".") for w in wanted)]
    unmatched = [w for w in wanted if not any(n == w or n.startswith(w + ".") for n in names)]
    if unmatched or not chosen:
        raise ValueError(f"train-tensors {unmatched or wanted} match no tensor of {names}")
    return chosen


def _stored_offset(context: Context) -> dict[str, torch.Tensor] | None:
    if OFFSET_STATE_KEY not in context.state:
        return None
    return context.state[OFFSET_STATE_KEY].to_torch_state_dict()


@app.train()
def train(msg: Message, context: Context) -> Message:
    task = ClientTask.from_config(msg.content["config"])
    server_round = int(msg.content["config"]["server-round"])
    pid, data = load_client_data(task, context.node_config)
    device = pick_device(task.device)
    theta = msg.content[OFFSET_KEY].to_torch_state_dict()
    model = build_model(task.model)
    personal = task.mode == "personal"
    trainable = _trainable(context, model)

    metrics: dict[str, float | int] = {}
    _, metrics[m.SHARED_ACC] = evaluate(load_params(model, theta), data.x_val, data.y_val, device)
    result = train_offset(
        model, theta, data.x_train, data.y_train,
        epochs=task.local_epochs, lr=task.local_lr, batch_size=task.batch_size,
        proximal=task.proximal_coefficient, device=device,
        seed=int(np.random.SeedSequence([task.seed, pid, server_round]).generate_state(1)[0]),
        warm_offset=_stored_offset(context) if personal else None,
        trainable=trainable,
    )
    if personal:
        context.state[OFFSET_STATE_KEY] = ArrayRecord(result.offset)
        _, metrics[m.PERSONAL_ACC] = evaluate(model, data.x_val, data.y_val, device)
    metrics.update({
        NUM_EXAMPLES: len(data.y_train),
        m.TRAIN_LOSS: result.loss,
        m.TRAIN_SECONDS: result.seconds,
        m.PARTITION_ID: pid,
        m.DEVICE_CUDA: int(device.type == "cuda"),
    })
    content = RecordDict(
        {OFFSET_KEY: ArrayRecord(result.offset), METRICS_KEY: MetricRecord(metrics)}
    )
    if trainable is not None:
        content[MANIFEST_KEY] = ConfigRecord({"tensors": trainable})
    if task.combiner == "fisher":
        fisher = diagonal_fisher(
            model, data.x_train, data.y_train, device, names=trainable, seed=task.seed
        )
        content[FISHER_KEY] = ArrayRecord(fisher)
    return Message(content=content, reply_to=msg)


@app.evaluate()
def evaluate_shared(msg: Message, context: Context) -> Message:
    """Local validation metrics of theta, and in personal mode of theta + theta_i."""
    task = ClientTask.from_config(msg.content["config"])
    pid, data = load_client_data(task, context.node_config)
    device = pick_device(task.device)
    theta = msg.content[OFFSET_KEY].to_torch_state_dict()
    model = load_params(build_model(task.model), theta)
    loss, acc = evaluate(model, data.x_val, data.y_val, device)
    metrics: dict[str, float | int] = {
        m.EVAL_LOSS: loss, m.EVAL_ACC: acc, NUM_EXAMPLES: len(data.y_val), m.PARTITION_ID: pid,
    }
    offset = _stored_offset(context)
    if task.mode == "personal" and offset is not None:
        model = load_params(model, theta, offset)
        metrics[m.PERSONAL_LOSS], metrics[m.PERSONAL_ACC] = evaluate(
            model, data.x_val, data.y_val, device
        )
    return Message(content=RecordDict({METRICS_KEY: MetricRecord(metrics)}), reply_to=msg)
