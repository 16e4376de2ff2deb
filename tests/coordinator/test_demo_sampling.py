"""`fedmerge demo` honours fraction-train: min-nodes is no longer pinned to the client
count (which made Flower sample every client whatever the fraction)."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

import fedmerge.demo
from coordinator.config import parse_run_config
from coordinator.federation import build_strategy
from fedmerge.cli import app, demo_min_nodes


@pytest.fixture
def captured(monkeypatch) -> dict:
    seen: dict = {}

    def fake_run_demo(overrides, **kwargs) -> int:
        seen.update(overrides)
        return 0

    monkeypatch.setattr(fedmerge.demo, "run_demo", fake_run_demo)
    return seen


@pytest.mark.parametrize(
    ("args", "min_nodes"),
    [
        (["--clients", "1000", "--set", "fraction-train=0.05"], 50),
        (["--clients", "10"], 10),
        (["--clients", "1000", "--set", "fraction-train=0.05", "--set", "min-nodes=7"], 7),
    ],
)
def test_demo_min_nodes_follow_fraction_train(captured, args, min_nodes) -> None:
    result = CliRunner().invoke(app, ["demo", "--no-dashboard", *args])
    assert result.exit_code == 0, result.output
    assert captured["min-nodes"] == min_nodes


def test_flower_then_samples_the_fraction() -> None:
    cfg = parse_run_config({"num-clients": 1000, "fraction-train": 0.05,
                            "min-nodes": demo_min_nodes(1000, 0.05)})
    strategy = build_strategy(cfg)
    # Flower's FedAvg: max(int(available x fraction), min_train_nodes)
    assert max(int(1000 * strategy.fraction_train), strategy.min_train_nodes) == 50


def test_a_fraction_that_is_not_a_number_is_left_to_validation() -> None:
    assert demo_min_nodes(10, "half") == 10
    assert demo_min_nodes(10, 0.0) == 10
