"""Federated evaluation records (coordinator/evaluation.py): weighted by examples, once."""

from __future__ import annotations

import pytest

from coordinator.evaluation import federated_records, headline_of


def test_clients_evaluations_are_weighted_by_their_examples() -> None:
    rows = [{"num-examples": 30.0, "eval-loss": 1.0, "eval-acc": 0.5, "partition-id": 0.0},
            {"num-examples": 10.0, "eval-loss": 3.0, "eval-acc": 0.9, "partition-id": 1.0}]
    (fed,) = federated_records(rows)
    assert fed.kind == "federated" and fed.num_examples == 40
    assert fed.loss == pytest.approx(1.5) and fed.accuracy == pytest.approx(0.6)
    assert set(fed.metrics["clients"]) == {"0", "1"}


def test_a_task_without_accuracy_is_recorded_by_its_loss() -> None:
    rows = [{"num-examples": 1.0, "eval-loss": 0.2, "personal-loss": 0.1},
            {"num-examples": 3.0, "eval-loss": 0.6, "personal-loss": 0.3}]
    fed, personal = federated_records(rows)
    assert fed.accuracy is None and fed.loss == pytest.approx(0.5) and fed.num_examples == 4
    assert personal.kind == "personalized" and personal.loss == pytest.approx(0.25)
    assert federated_records([{"num-examples": 5.0}]) == []


def test_the_headline_is_the_one_the_task_names() -> None:
    assert headline_of({"headline": "r2", "r2": 0.75}, None) == ("r2", 0.75)
    assert headline_of({}, 0.9) == ("accuracy", 0.9)  # records from before tasks
    assert headline_of({"headline": "perplexity"}, 0.1) == ("perplexity", None)
