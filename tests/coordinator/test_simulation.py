"""Whole federations on Flower's simulation engine (Ray on 127.0.0.1), real digits."""

from __future__ import annotations

from pathlib import Path

import pytest

from coordinator.config import parse_run_config
from coordinator.simulation import simulate
from coordinator.store import make_engine, make_session_factory, repo

pytestmark = pytest.mark.simulation


def _rows(db_url: str, run_id: str):
    engine = make_engine(db_url)
    with make_session_factory(engine)() as s:
        rounds = list(repo.rounds_of(s, run_id))
        evals = list(repo.evaluations_of(s, run_id))
        updates = list(repo.updates_of(s, run_id))
    engine.dispose()
    return rounds, evals, updates


def test_five_clients_reach_90_percent_within_10_rounds(tmp_path: Path, db_url: str) -> None:
    """On SQLite and on PostgreSQL: the same code path."""
    cfg = parse_run_config({
        "db": db_url,
        "num-server-rounds": 10, "num-clients": 5, "min-nodes": 5, "optimizer": "adam",
        "server-lr": 0.05, "partition": "dirichlet", "dirichlet-alpha": 0.5,
        "out-dir": str(tmp_path),
    })
    committed = []
    result = simulate(cfg, num_clients=5, on_commit=lambda r: committed.append(r.number))
    assert committed == list(range(1, 11))
    rounds, evals, updates = _rows(result.db_url, result.run_id)
    assert result.db_url == db_url
    assert [r.number for r in rounds] == list(range(1, 11))
    assert all(r.status == "committed" and r.num_accepted == 5 for r in rounds)
    central = {e.round_number: e.accuracy for e in evals if e.kind == "central"}
    assert central[0] < 0.2  # the untrained model
    # Judged on the final round, not the best one: measured on this setting, the final
    # central accuracy was 0.942 for seed 0 (this test's), 0.908 and 0.928 for seeds 1
    # and 2, and no round after the 5th fell below 0.88 for any of them; reply order
    # moves float32 sums at 1e-6, far from moving accuracy by the 0.04 margin.
    assert central[10] >= 0.90
    assert result.central_accuracy == pytest.approx(central[10])
    assert {u.partition_id for u in updates} == set(range(5))


def test_personal_mode_beats_the_shared_model_on_each_clients_own_data(tmp_path: Path) -> None:
    cfg = parse_run_config({
        "num-server-rounds": 4, "num-clients": 8, "min-nodes": 8, "mode": "personal",
        "lam": 0.1, "optimizer": "sgd", "server-lr": 10.0, "partition": "pathological",
        "classes-per-client": 2, "out-dir": str(tmp_path),
    })
    result = simulate(cfg, num_clients=8)
    _, evals, _ = _rows(result.db_url, result.run_id)
    last = max(e.round_number for e in evals)
    fed = next(e for e in evals if e.kind == "federated" and e.round_number == last)
    clients = fed.metrics["clients"]
    assert len(clients) == 8
    for pid, m in clients.items():
        assert m["personal-acc"] > m["eval-acc"], f"client {pid}: {m}"
    assert any(e.kind == "personalized" for e in evals)
