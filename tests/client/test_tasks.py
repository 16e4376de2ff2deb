"""The task API (client/tasks/): how a run names its task, validates its settings, and
what a node does when its model or data does not fit the task. The example task of
examples/tabular-task is the third-party task these tests load."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, Context, Message, MessageType, RecordDict

import tests.utils.replies  # noqa: F401  (stamps a TaskIdentity so Message() works here)
from client.client_app import train
from client.models import build_model as builtin_model
from client.tasks import Arrays, DataError, Task, TaskError, load_task
from client.tasks.api import NoSettings, Splits
from client.tasks.runtime import RunPartition, build_model, check_theta, node_data, shared_params
from coordinator.config import ConfigError, parse_run_config
from coordinator.federation import client_config
from tests.client.example_task import TABULAR, example_importable

example_importable()


class Plain:  # not a Task
    pass


class NoModel(Task):  # a Task that forgot build_model
    pass


class Regression(Task):
    kind = "regression"
    headline = "loss"
    higher_is_better = False

    def build_model(self) -> torch.nn.Module:
        return torch.nn.Linear(3, 1)


@pytest.mark.parametrize(
    ("task", "fragment"),
    [
        ("no_such_package.tasks:Classifier", "cannot import module 'no_such_package.tasks'"),
        ("client.tasks.digits:Nope", "has no attribute 'Nope'"),
        ("tests.client.test_tasks:Plain", "is a type, not a subclass of client.tasks.Task"),
        ("client.tasks.digits:DigitsSettings", "not a subclass"),
        ("digits-v2", "neither a built-in"),
        ("tests.client.test_tasks:NoModel", "does not define build_model"),
    ],
)
def test_a_task_that_does_not_resolve_fails_at_start_naming_it(task: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as exc:
        parse_run_config({"task": task})
    assert f"task {task!r}" in str(exc.value) and fragment in str(exc.value)


@pytest.mark.parametrize(
    ("task", "config", "field"),
    [
        ("digits", '{model="transformer"}', "task-config.model"),
        ("digits", {"hidden": 0}, "task-config.hidden"),
        ("digits", '{"widht": 3}', "task-config.widht"),
        (TABULAR, '{label="age"}', "label column 'age' is also a feature"),
        (TABULAR, '{classes=["one"]}', "task-config.classes"),
    ],
)
def test_task_settings_are_validated_at_start_naming_task_and_field(
    task: str, config: object, field: str
) -> None:
    with pytest.raises(ConfigError) as exc:
        parse_run_config({"task": task, "task-config": config})
    assert f"task {task!r}" in str(exc.value) and field in str(exc.value)


def test_task_config_is_json_or_a_toml_inline_table_and_travels_canonical() -> None:
    a = parse_run_config({"task-config": '{model = "cnn", hidden = 64}'})
    b = parse_run_config({"task-config": '{"hidden": 64, "model": "cnn"}'})
    assert a.task_config == b.task_config == json.dumps({"hidden": 64, "model": "cnn"})
    record = client_config(a)
    assert record["task"] == "digits" and json.loads(record["task-config"])["model"] == "cnn"
    with pytest.raises(ConfigError, match="task-config"):
        parse_run_config({"task-config": "model = cnn"})


def test_model_and_dataset_are_deprecated_aliases_that_say_so() -> None:
    with pytest.warns(DeprecationWarning, match=r"task=\"digits\" task-config='\{model=\"cnn\"\}'"):
        cfg = parse_run_config({"model": "cnn"})
    assert (cfg.task, json.loads(cfg.task_config)) == ("digits", {"model": "cnn"})
    with pytest.warns(DeprecationWarning, match="dataset"):
        assert parse_run_config({"dataset": "shakespeare", "model": "gru"}).task == "shakespeare"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        with pytest.raises(ConfigError, match="conflicts"):
            parse_run_config({"model": "cnn", "task": TABULAR})
    assert "model" not in parse_run_config({}).as_run_config()


def test_the_builtin_task_builds_the_same_model_as_before() -> None:
    for config, name in (("", "mlp"), ('{model="cnn"}', "cnn")):
        task = load_task("digits", config)
        params = shared_params(task, build_model(task, seed=3))
        old = builtin_model(name, seed=3).state_dict()
        assert list(params) == list(old)
        assert all(torch.equal(params[k], old[k]) for k in old)


def test_train_tensors_freeze_the_rest_and_only_they_travel() -> None:
    class Head(Task):
        train_tensors = ("fc2.*",)

        def build_model(self) -> torch.nn.Module:
            return builtin_model("mlp")

    task = Head(Head.Settings())
    model = build_model(task, seed=0)
    assert sorted(shared_params(task, model)) == ["fc2.bias", "fc2.weight"]
    assert [n for n, p in model.named_parameters() if p.requires_grad] == ["fc2.weight", "fc2.bias"]


def test_a_regression_task_gets_the_default_loop_with_mse() -> None:
    task = Regression(Regression.Settings())
    model = build_model(task, seed=0)
    x = np.random.default_rng(0).normal(size=(64, 3)).astype(np.float32)
    y = (x @ np.array([1.0, -2.0, 0.5], np.float32)).astype(np.float32)
    before = task.evaluate(model, Arrays(x, y), torch.device("cpu"))
    from client.trainer import fit_offset

    theta = shared_params(task, model)
    res = fit_offset(task, model, theta, Arrays(x, y), epochs=20, lr=0.05, batch_size=16,
                     proximal=0.0, device=torch.device("cpu"), seed=0)
    after = task.evaluate(model, Arrays(x, y), torch.device("cpu"))
    assert set(before) >= {"loss"} and after["loss"] < 0.2 * before["loss"]
    assert sorted(res.offset) == ["bias", "weight"]


@pytest.mark.parametrize(
    ("other", "fragment"),
    [
        ({"hidden": 16}, "tensor 'hidden.weight' is (16, 8) torch.float32 here, (32, 8)"),
        ({"features": ["age", "income"]}, "tensor 'hidden.weight' is (32, 2)"),
    ],
)
def test_a_node_whose_model_differs_says_which_tensor_and_how(
    other: dict, fragment: str
) -> None:
    ours = load_task(TABULAR)
    theta = shared_params(ours, build_model(ours, 0))
    theirs = load_task(TABULAR, other)
    with pytest.raises(TaskError) as exc:
        check_theta(theirs, build_model(theirs, 0), theta)
    assert f"task {TABULAR}" in str(exc.value) and fragment in str(exc.value)


def test_a_node_with_other_tensor_names_or_dtypes_is_refused() -> None:
    task = load_task("digits")
    model = build_model(task, 0)
    theta = shared_params(task, model)
    renamed = {("layer1.weight" if k == "fc1.weight" else k): v for k, v in theta.items()}
    with pytest.raises(TaskError, match=r"names differ \(only here: \['fc1.weight'\]"):
        check_theta(task, model, renamed)
    doubled = {**theta, "fc2.bias": theta["fc2.bias"].double()}
    with pytest.raises(TaskError, match="'fc2.bias' is .* torch.float32 here, .* torch.float64"):
        check_theta(task, model, doubled)


def test_the_client_app_refuses_a_theta_that_does_not_fit_its_model() -> None:
    cfg = parse_run_config({"task": TABULAR, "local-epochs": 1, "device": "cpu"})
    config = client_config(cfg)
    config["server-round"] = 1
    theta = shared_params(load_task("digits"), build_model(load_task("digits"), 0))
    msg = Message(RecordDict({"arrays": ArrayRecord(theta), "config": config}), dst_node_id=1,
                  message_type=MessageType.TRAIN)
    ctx = Context(run_id=1, node_id=1, node_config={"partition-id": 0, "num-partitions": 4},
                  state=RecordDict(), run_config={})
    with pytest.raises(TaskError, match=f"task {TABULAR}: this node's model does not match"):
        train(msg, ctx)


def _write(path: Path, header: str, rows: list[str]) -> None:
    path.mkdir(parents=True, exist_ok=True)
    (path / "train.csv").write_text("\n".join([header, *rows]) + "\n")


ROW = "1,2,3,4,5,6,7,8"
HEADER = "age,income,tenure,visits,spend,returns,rating,distance,segment"


def test_a_workers_csv_is_read_by_column_name(tmp_path: Path) -> None:
    _write(tmp_path, "id," + HEADER, [f"{i},{ROW},{'gold' if i % 2 else 'bronze'}"
                                      for i in range(10)])
    pid, data = node_data(load_task(TABULAR), {"data-dir": str(tmp_path), "partition-id": 5},
                          RunPartition())
    assert pid == 5 and len(data.train) == 8 and len(data.val) == 2
    assert data.train.x.shape == (8, 8) and data.train.x.dtype == np.float32
    assert set(np.concatenate([data.train.y, data.val.y]).tolist()) == {0, 2}
    assert data.train.x[0].tolist() == [1, 2, 3, 4, 5, 6, 7, 8]  # the id column is ignored


@pytest.mark.parametrize(
    ("header", "rows", "fragment"),
    [
        (HEADER.replace("rating,", ""), ["1,2,3,4,5,6,8,gold"], "no column(s) ['rating']"),
        (HEADER.replace("segment", "tier"), [f"{ROW},gold"], "no column(s) ['segment']"),
        (HEADER, [f"{ROW},gold", f"{ROW},platinum"], "line 3: label 'platinum' in column "
         "'segment' is not one of the classes ['bronze', 'silver', 'gold']"),
        (HEADER, [f"{ROW},gold", "1,2,x,4,5,6,7,8,gold"], "line 3: a feature is missing"),
        (HEADER, [f"{ROW},gold", "1,2,nan,4,5,6,7,8,gold"], "line 3: NaN or infinite"),
    ],
)
def test_a_csv_that_does_not_fit_the_task_names_file_line_and_column(
    tmp_path: Path, header: str, rows: list[str], fragment: str
) -> None:
    _write(tmp_path, header, rows)
    with pytest.raises(DataError) as exc:
        node_data(load_task(TABULAR), {"data-dir": str(tmp_path)}, RunPartition())
    assert f"task {TABULAR}" in str(exc.value) and str(tmp_path / "train.csv") in str(exc.value)
    assert fragment in str(exc.value)


def test_the_worker_start_check_uses_the_task(tmp_path: Path) -> None:
    from client.local_data import check_data_dir

    _write(tmp_path, HEADER, [f"{ROW},silver"] * 5)
    assert len(check_data_dir(tmp_path, TABULAR).train) == 4
    with pytest.raises(DataError, match="no train.npz or train.csv|not a numeric CSV"):
        check_data_dir(tmp_path)  # the digits format: 64 numbers and a label


@pytest.mark.parametrize(
    ("task", "config", "tensors"),
    [
        ("digits", '{model="cnn"}', {"conv1.weight", "conv2.bias", "head.weight"}),
        (TABULAR, "", {"hidden.weight", "out.bias"}),
    ],
)
def test_the_client_app_trains_the_runs_task(task: str, config: str, tensors: set) -> None:
    cfg = parse_run_config({"task": task, "task-config": config, "local-epochs": 1,
                            "device": "cpu", "partition": "iid"})
    loaded = load_task(task, config)
    theta = shared_params(loaded, build_model(loaded, cfg.seed))
    record = client_config(cfg)
    record["server-round"] = 1
    msg = Message(RecordDict({"arrays": ArrayRecord(theta), "config": record}), dst_node_id=1,
                  message_type=MessageType.TRAIN)
    ctx = Context(run_id=1, node_id=1, node_config={"partition-id": 1, "num-partitions": 4},
                  state=RecordDict(), run_config={})
    reply = train(msg, ctx)
    offset = reply.content["arrays"].to_torch_state_dict()
    assert tensors <= set(offset) and set(offset) == set(theta)
    assert any(offset[k].abs().max() > 0 for k in offset)
    metrics = reply.content["metrics"]
    assert metrics["num-examples"] > 0 and 0.0 <= metrics["shared-acc"] <= 1.0


def test_a_worker_refuses_at_start_a_csv_that_does_not_fit_the_task(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from fedmerge.cli import app

    _write(tmp_path / "data", HEADER.replace("segment", "tier"), [f"{ROW},gold"] * 4)
    result = CliRunner().invoke(app, [
        "worker", "--coordinator", "127.0.0.1:9", "--insecure", "--work-dir",
        str(tmp_path / "w"), "--data", str(tmp_path / "data"), "--task", TABULAR,
    ])
    assert result.exit_code == 2, result.output
    assert f"task {TABULAR}" in result.output and "no column(s) ['segment']" in result.output
    assert not (tmp_path / "w" / "logs").exists()  # no SuperNode was started


def test_a_simulated_node_with_no_training_example_says_so() -> None:
    class Empty(Task):
        def partition(self, request):
            none = Arrays(np.zeros((0, 4), np.float32), np.zeros(0, np.int64))
            return Splits(none, none)

    with pytest.raises(DataError, match="partition-id 7 of num-partitions 9 has no training"):
        node_data(Empty(NoSettings()), {"partition-id": 7, "num-partitions": 9}, RunPartition())
