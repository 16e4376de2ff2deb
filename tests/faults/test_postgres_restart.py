"""PostgreSQL restarted in the middle of a run: the coordinator retries its round commit
with a growing, bounded pause and the run completes; no round is lost or recorded twice
(checked from the store). The server is the test's own (``own_postgres``)."""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from coordinator.config import parse_run_config
from coordinator.simulation import simulate
from coordinator.store import (
    RoundRecord,
    UpdateRecord,
    in_transaction,
    make_engine,
    make_session_factory,
    repo,
    upgrade_to_head,
)

pytestmark = pytest.mark.postgres


def _record(number: int) -> RoundRecord:
    now = datetime.now(UTC)
    updates = tuple(UpdateRecord(str(n), True, num_examples=10) for n in range(3))
    return RoundRecord(number, now, now, 0.1, 0.2, 0.01, 0.05, {"train-loss": 1.0},
                       f"/ck/round-{number}", f"{number:064x}", updates, ())


def _run_in_round_1(url: str) -> tuple[Engine, sessionmaker[Session], str]:
    """A migrated store on ``url`` holding one run whose round 1 is in flight."""
    engine = make_engine(url)
    upgrade_to_head(engine)
    sessions = make_session_factory(engine)
    with sessions.begin() as s:
        run_id = repo.create_run(s, name="r", config={}, mode="global", optimizer="sgd",
                                 combiner="mean", num_rounds_planned=2, out_dir="/x")
        repo.start_round(s, run_id, 1, datetime.now(UTC))
    return engine, sessions, run_id


def test_a_round_commit_outlives_a_restart_mid_transaction(own_postgres) -> None:
    engine, sessions, run_id = _run_in_round_1(own_postgres.url)
    record = _record(1)
    attempts = []

    def commit(s: Session) -> None:
        attempts.append(1)
        repo.commit_round(s, run_id, record)
        if len(attempts) == 1:
            s.flush()  # the round's rows are written, the transaction still open...
            own_postgres.ctl("-m", "fast", "restart")  # ...when the server goes down

    in_transaction(sessions, commit, done=lambda s: repo.round_is_committed(s, run_id, record))
    with sessions() as s:
        rounds = [(r.number, r.status) for r in repo.rounds_of(s, run_id)]
        updates = repo.updates_of(s, run_id)
    engine.dispose()
    assert len(attempts) >= 2
    assert rounds == [(1, "committed")] and len(updates) == 3


def test_a_round_commit_waits_for_a_server_that_is_down(own_postgres) -> None:
    engine, sessions, run_id = _run_in_round_1(own_postgres.url)
    own_postgres.stop()
    back = threading.Timer(2.0, own_postgres.start)
    back.start()
    record = _record(1)
    try:
        in_transaction(sessions, lambda s: repo.commit_round(s, run_id, record),
                       done=lambda s: repo.round_is_committed(s, run_id, record))
    finally:
        back.join()
    with sessions() as s:
        assert [(r.number, r.status) for r in repo.rounds_of(s, run_id)] == [(1, "committed")]
        assert len(repo.updates_of(s, run_id)) == 3
    engine.dispose()


@pytest.mark.simulation
def test_a_run_survives_a_postgres_restart_between_rounds(own_postgres, tmp_path: Path) -> None:
    """The server goes down right after round 2 commits and stays down 3 s: round 3's
    start and commit meet it down; the run waits, then goes on."""
    rounds = 4
    cfg = parse_run_config({
        "num-server-rounds": rounds, "num-clients": 3, "min-nodes": 3, "local-epochs": 1,
        "out-dir": str(tmp_path), "db": own_postgres.url, "seed": 1,
    })
    restarts: list[threading.Timer] = []

    def on_commit(rec: RoundRecord) -> None:
        if rec.number == 2:
            own_postgres.stop()
            restarts.append(threading.Timer(3.0, own_postgres.start))
            restarts[-1].start()

    try:
        result = simulate(cfg, num_clients=3, on_commit=on_commit)
    finally:
        for t in restarts:
            t.join()
    assert restarts, "round 2 never committed"
    engine = make_engine(own_postgres.url)
    with make_session_factory(engine)() as s:
        run = repo.get_run(s, result.run_id)
        got = [(r.number, r.status) for r in repo.rounds_of(s, result.run_id)]
        updates = repo.updates_of(s, result.run_id)
    engine.dispose()
    assert run.status == "completed", run.error
    assert got == [(n, "committed") for n in range(1, rounds + 1)]
    per_round = [sum(u.round_number == n for u in updates) for n in range(1, rounds + 1)]
    assert per_round == [3] * rounds  # each client's update of each round, once
