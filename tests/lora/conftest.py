"""The LoRA tests' shared pieces: a very small causal LM built once per session in a
temporary directory, the Shakespeare fixture as the roles' text, and an in-process
federation (the ClientApp's own train/evaluate functions answer a scripted grid)."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from flwr.app import Context, Message, MessageType, RecordDict

import tests.utils.replies  # noqa: F401  (stamps a TaskIdentity so Message() works here)
from client.client_app import evaluate_shared, train
from client.tasks.tiny_lm import PRETRAIN_TEXT, TinyLMSpec, build_tiny_model
from client.threads import torch_threads
from coordinator.config import parse_run_config
from coordinator.federation import FederationResult, run_federation
from tests.utils.grids import ScriptedGrid

ROOT = Path(__file__).resolve().parents[2]
SPEC = TinyLMSpec(vocab_size=300, hidden=32, layers=2, heads=2, intermediate=64, context=32,
                  pretrain_window=32, pretrain_steps=60, pretrain_batch=8)
SETTINGS = {"rank": 4, "alpha": 8.0, "max-seq-len": 32, "max-train-chunks": 16,
            "max-val-chunks": 4, "central-chunks-per-role": 4}


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    with torch_threads(1):  # the tiny model's matrices are too small for threads to pay
        yield


@pytest.fixture(scope="session")
def shakespeare_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """The shipped scenes of Othello as the roles' text (3 roles of >= 40 lines)."""
    env = {"FEDMERGE_SHAKESPEARE_SOURCE": str(ROOT / "bench/fixtures/shakespeare"),
           "FEDMERGE_SHAKESPEARE_MIN_LINES": "40",
           "FEDMERGE_CACHE": str(tmp_path_factory.mktemp("cache"))}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    yield
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    with torch_threads(1):  # the tiny model's matrices are too small for threads to pay
        return build_tiny_model(SPEC, PRETRAIN_TEXT.read_text(), tmp_path_factory.mktemp("tiny"))


def task_config(model: Path, **extra: Any) -> str:
    return json.dumps({"model-path": str(model), **SETTINGS, **extra})


def data_dir_node(root: Path) -> Path:
    """A worker's own files: JSONL prompt/response pairs for training, plain text for
    validation (the second half of the pretraining text's lines)."""
    lines = [ln for ln in PRETRAIN_TEXT.read_text().splitlines() if ln.strip()]
    half = lines[len(lines) // 2:]
    root.mkdir(parents=True, exist_ok=True)
    with (root / "train.jsonl").open("w") as f:
        for a, b in zip(half[0::2], half[1::2], strict=False):
            f.write(json.dumps({"prompt": a, "response": b}) + "\n")
    (root / "val.txt").write_text("\n".join(half[-40:]))
    return root


@dataclass
class Federation:
    result: FederationResult
    requests: list[Message] = field(default_factory=list)  # train requests, in order
    replies: list[Message] = field(default_factory=list)  # train replies, in order


def federate(tmp: Path, model: Path, *, tamper: Callable[[int, Message], Message] | None = None,
             **run_config: Any) -> Federation:
    """Four nodes (three Shakespeare roles, one data-dir) run in this process."""
    contexts = {
        node: Context(run_id=1, node_id=node, state=RecordDict(), run_config={},
                      node_config=({"partition-id": node - 1, "num-partitions": 3}
                                   if node <= 3 else {"partition-id": 3, "data-dir": str(
                                       data_dir_node(tmp / "node4"))}))
        for node in (1, 2, 3, 4)
    }
    seen = Federation(result=None)  # type: ignore[arg-type]

    def respond(msg: Message) -> Message:
        node = msg.metadata.dst_node_id
        if msg.metadata.message_type != MessageType.TRAIN:
            return evaluate_shared(msg, contexts[node])
        seen.requests.append(msg)
        reply = train(msg, contexts[node])
        if tamper is not None:
            reply = tamper(node, reply)
        seen.replies.append(reply)
        return reply

    cfg = parse_run_config({
        "task": "causal-lm", "task-config": task_config(model),
        "num-server-rounds": 3, "min-nodes": 4, "local-epochs": 1, "local-lr": 0.01,
        "batch-size": 8, "device": "cpu", "fraction-evaluate": 0.0,
        "out-dir": str(tmp), "db": f"sqlite:///{tmp / 'fedmerge.db'}", **run_config,
    })
    seen.result = run_federation(ScriptedGrid([1, 2, 3, 4], respond, per_pull=4), cfg)
    return seen
