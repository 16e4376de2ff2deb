"""The run config: validated once, at the edge, with messages that name the key."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from client.task import ClientTask
from coordinator.config import ConfigError, MergeConfig, parse_run_config
from coordinator.federation import client_config

ROOT = Path(__file__).resolve().parents[2]


def test_pyproject_run_config_matches_the_defaults() -> None:
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]
    assert declared == MergeConfig().as_run_config()


@pytest.mark.parametrize(
    ("overrides", "names"),
    [
        ({"num-server-round": 3}, ["unknown config key(s) num-server-round"]),
        ({"server-lr": 0}, ["server-lr", "greater than 0"]),
        ({"mode": "federated"}, ["mode", "'global' or 'personal'"]),
        ({"trim-beta": 0.5}, ["trim-beta", "less than 0.5"]),
        ({"local-epochs": "two"}, ["local-epochs"]),
        ({"combiner": "krum", "min-nodes": 4, "krum-byzantine": 1}, ["min-nodes", ">= 5"]),
        ({"merge-threads": -1}, ["merge-threads", "greater than or equal to 0"]),
    ],
)
def test_bad_config_fails_naming_the_key(overrides: dict, names: list[str]) -> None:
    with pytest.raises(ConfigError) as exc:
        parse_run_config(overrides)
    for name in names:
        assert name in str(exc.value)


def test_config_is_frozen_and_scales_the_gradient_by_mode() -> None:
    cfg = parse_run_config({"mode": "personal", "lam": 0.25})
    assert cfg.gradient_scale == 0.25
    assert parse_run_config({"lam": 0.25}).gradient_scale == 1.0
    with pytest.raises(ValueError):
        cfg.lam = 3.0  # type: ignore[misc]


def test_round_config_carries_exactly_the_client_task() -> None:
    cfg = parse_run_config({"local-epochs": 4, "mode": "personal", "lam": 0.5})
    record = client_config(cfg)
    assert sorted(record) == sorted(ClientTask.config_keys())
    task = ClientTask.from_config(record)
    assert (task.local_epochs, task.mode, task.proximal_coefficient) == (4, "personal", 0.5)


def test_readme_documents_every_key() -> None:
    readme = (ROOT / "README.md").read_text()
    missing = [k for k in MergeConfig().as_run_config() if f"`{k}`" not in readme]
    assert missing == []
