"""Bad input to the causal-lm task and to the exact merge: a model path that does not
exist or is not a causal LM, a tokenizer of another vocabulary, a worker's bad JSONL,
and adapters with the wrong rank, shape or target modules (rejected with the reason,
the round going on with the others)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, Message

from client.tasks.api import DataError, TaskError
from client.tasks.registry import load_task
from client.tasks.text_data import read_documents
from client.tasks.tiny_lm import PRETRAIN_TEXT, train_tokenizer
from coordinator.config import ConfigError, parse_run_config
from coordinator.low_rank import low_rank_replies
from coordinator.payloads import record_tensors
from coordinator.replies import UpdateLimits, UpdateRejected, decode_reply
from coordinator.store import make_engine, make_session_factory, repo
from tests.lora.conftest import federate, task_config
from tests.utils.replies import reply


def start(model: Path | str, **extra) -> None:
    parse_run_config({"task": "causal-lm", "task-config": json.dumps(
        {"model-path": str(model), **extra})})


def test_a_model_path_that_does_not_exist_stops_the_run_at_start(tmp_path) -> None:
    with pytest.raises(ConfigError, match=r"task-config\.model-path: .*does not exist"):
        start(tmp_path / "nowhere")
    with pytest.raises(ConfigError, match="no config.json"):
        start(tmp_path)


def test_a_model_that_is_not_a_causal_lm_is_named(tmp_path) -> None:
    from transformers import ViTConfig

    ViTConfig(hidden_size=8, num_hidden_layers=1, num_attention_heads=2).save_pretrained(tmp_path)
    with pytest.raises(ConfigError, match=r"is not a causal language model.*ViTConfig"):
        start(tmp_path)


def test_a_tokenizer_whose_vocabulary_does_not_match_the_model(tiny_model, tmp_path) -> None:
    other = tmp_path / "model"
    shutil.copytree(tiny_model, other)
    for f in other.glob("tokenizer*"):
        f.unlink()
    train_tokenizer(PRETRAIN_TEXT.read_text(), 600).save_pretrained(other)
    with pytest.raises(ConfigError, match=r"vocabulary \(\d+ tokens\) does not match"):
        start(other)


def test_target_modules_the_model_does_not_have(tiny_model) -> None:
    task = load_task("causal-lm", task_config(tiny_model, **{"target-modules": ["qkv"]}))
    with pytest.raises(TaskError, match="target-modules"):
        task.build_model()


def test_a_workers_bad_jsonl_line_is_named(tmp_path) -> None:
    path = tmp_path / "train.jsonl"
    path.write_text('{"text": "fine"}\n{"prompt": "no response"}\n')
    with pytest.raises(DataError, match=r"train.jsonl:2: .*'text', or 'prompt' and 'response'"):
        read_documents(path, "{prompt}\n{response}")
    path.write_text('{"text": "fine"}\nnot json\n')
    with pytest.raises(DataError, match=r"train.jsonl:2: not a JSON object"):
        read_documents(path, "{prompt}\n{response}")


def factor_reply(low, *, rank_of=None, drop=(), rename=None) -> Message:
    arrays = {}
    for name, t in low.template.items():
        shape = list(t.shape)
        if rank_of is not None:
            shape[0 if ".lora_A." in name else 1] = rank_of
        if name in drop:
            continue
        arrays[(rename or {}).get(name, name)] = np.full(shape, 0.01, np.float32)
    return reply(arrays, examples=10)


def test_adapters_of_the_wrong_rank_shape_or_modules_are_rejected_with_the_reason(
    shakespeare_fixture, tiny_model
) -> None:
    low = low_rank_replies("causal-lm", task_config(tiny_model), 0)
    assert low is not None
    template = {n: torch.empty(0) for n in low.layout}  # theta's names: offsets land there
    ok = decode_reply(factor_reply(low), template, UpdateLimits(), low_rank=low)
    assert set(ok.update.offset) == set(template)
    a_name = next(n for n in low.template if ".lora_A." in n)
    cases = {
        "rank": (factor_reply(low, rank_of=2), r"shape \(2, \d+\) != model's \(4, \d+\)"),
        "missing": (factor_reply(low, drop=(a_name,)), "missing tensor"),
        "module": (factor_reply(low, rename={a_name: a_name.replace("q_proj", "k_proj")}),
                   "unknown tensor"),
    }
    for msg, reason in cases.values():
        with pytest.raises(UpdateRejected, match=reason):
            decode_reply(msg, template, UpdateLimits(), low_rank=low)


def test_a_wrong_rank_adapter_is_rejected_in_a_round_that_goes_on(
    shakespeare_fixture, tiny_model, tmp_path
) -> None:
    def lower_rank(node: int, msg: Message) -> Message:
        if node == 2:  # node 2 sends rank-2 factors of a rank-4 run
            arrays = record_tensors(msg.content["arrays"])
            msg.content["arrays"] = ArrayRecord({
                n: Array((t[:2] if ".lora_A." in n else t[:, :2]).contiguous().numpy())
                for n, t in arrays.items()})
        return msg

    fed = federate(tmp_path, tiny_model, tamper=lower_rank, **{"num-server-rounds": 1})
    engine = make_engine(fed.result.db_url)
    try:
        with make_session_factory(engine)() as s:
            updates = repo.updates_of(s, fed.result.run_id)
            rounds = repo.rounds_of(s, fed.result.run_id)
    finally:
        engine.dispose()
    assert [r.status for r in rounds] == ["committed"]
    rejected = [u for u in updates if not u.accepted]
    assert len(updates) == 4 and len(rejected) == 1
    assert rejected[0].node_id == "2" and "shape (2," in (rejected[0].reason or "")


def test_a_workers_text_files_become_windows_and_a_missing_train_file_is_named(
    tiny_model, tmp_path
) -> None:
    task = load_task("causal-lm", task_config(tiny_model))
    with pytest.raises(DataError, match="neither train.txt nor train.jsonl"):
        task.read_data_dir(tmp_path, 0)
    (tmp_path / "train.txt").write_text(PRETRAIN_TEXT.read_text())
    splits = task.read_data_dir(tmp_path, 0)  # no val file: the last tenth validates
    assert len(splits.val) >= 1 and len(splits.train) >= 9 * len(splits.val) - 9
    assert splits.train.ids.shape[1] == splits.val.ids.shape[1] == 32
    (tmp_path / "train.txt").write_text("too short")
    with pytest.raises(DataError, match="too little to split off"):
        task.read_data_dir(tmp_path, 0)
