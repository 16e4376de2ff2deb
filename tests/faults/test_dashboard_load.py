"""50 clients open the run page of a dashboard process (127.0.0.1) and poll its JSON API
while a run commits rounds into the same SQLite store: every request is answered with a
200, none and no log line says "database is locked", and every round commits. Round
times watched and unwatched are measured by bench/dashboard_load.py, not asserted here."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from bench.dashboard_load import LOCKED, free_port, start_dashboard, start_watchers
from coordinator.store import (
    EvaluationRecord,
    RoundRecord,
    UpdateRecord,
    make_session_factory,
    migrated_engine,
    repo,
)

POLLERS = 50
ROUNDS = 30


def _round(number: int, started: datetime) -> RoundRecord:
    updates = tuple(UpdateRecord(str(1000 + i), i != 3, None if i != 3 else "non-finite",
                                 partition_id=i, num_examples=100 + i, offset_norm=0.1 * i,
                                 train_seconds=0.5, metrics={"train-loss": 1.0 / number})
                    for i in range(10))
    evaluations = (EvaluationRecord("central", 1.0 / number, 0.5 + number / 100, 300),
                   EvaluationRecord("federated", 1.1 / number, 0.5, 250,
                                    {"clients": {str(i): {"eval-acc": 0.5} for i in range(10)}}))
    return RoundRecord(number, started, datetime.now(UTC), 0.01, 0.1, 0.002, 0.05,
                       {"train-loss": 1.0 / number}, f"/ck/round-{number}", f"{number:064x}",
                       updates, evaluations)


@pytest.mark.timeout(600)  # 50 run pages with their plots: minutes on a loaded machine
def test_fifty_pollers_while_rounds_commit(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'fedmerge.db'}"
    committed: list[int] = []
    failures: list[BaseException] = []
    with migrated_engine(db) as engine:
        sessions = make_session_factory(engine)
        with sessions.begin() as s:
            run_id = repo.create_run(s, name="watched", config={"seed": 0}, mode="global",
                                     optimizer="adam", combiner="mean", num_rounds_planned=ROUNDS,
                                     out_dir=str(tmp_path))
        proc = start_dashboard(tmp_path, free_port(), tmp_path / "dashboard.log")
        port = int(proc.args[proc.args.index("--port") + 1])
        stop, threads, stats = start_watchers(f"http://127.0.0.1:{port}", run_id, POLLERS,
                                              interval_s=0.5, max_s=600)

        def write() -> None:  # the coordinator's writes, as the ledger makes them
            try:
                for n in range(1, ROUNDS + 1):
                    started = datetime.now(UTC)
                    with sessions.begin() as s:
                        repo.start_round(s, run_id, n, started)
                    time.sleep(0.05)  # the round's training
                    with sessions.begin() as s:
                        repo.commit_round(s, run_id, _round(n, started))
                    committed.append(n)
                with sessions.begin() as s:
                    repo.finish_run(s, run_id, "completed")
            except BaseException as exc:  # noqa: BLE001 - the test reports it
                failures.append(exc)

        try:
            writer = threading.Thread(target=write)  # while the 50 run pages load
            writer.start()
            writer.join(240)
            assert not writer.is_alive(), "the writer did not finish in 240 s"
            give_up = time.monotonic() + 300
            while not all(s.page_latencies or s.errors for s in stats):
                assert time.monotonic() < give_up, "run pages still unanswered after 300 s"
                time.sleep(0.2)  # every client has had its run page
        finally:
            stop.set()
            for t in threads:
                t.join(60)
            proc.terminate()
            proc.wait(30)
    log = (tmp_path / "dashboard.log").read_text()
    assert not failures, failures
    assert committed == list(range(1, ROUNDS + 1))
    errors = [e for s in stats for e in s.errors]
    assert not errors, errors[:5]
    assert all(s.requests > 0 for s in stats)
    assert LOCKED not in log and "Traceback" not in log, log[-3000:]
