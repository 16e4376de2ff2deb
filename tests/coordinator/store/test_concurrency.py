"""The coordinator writes rounds while the dashboard reads, from separate processes/engines.

The writer runs in its own process (as the coordinator does); readers are threads with
their own engine (as the dashboard's would be). On SQLite this is what WAL and the busy
timeout are for: no "database is locked", and every read sees whole rounds only.
"""

from __future__ import annotations

import multiprocessing as mp
import threading
import time
from datetime import UTC, datetime
from multiprocessing.synchronize import Event as EventType
from typing import Any

from sqlalchemy import text

from coordinator.store import (
    EvaluationRecord,
    RoundRecord,
    UpdateRecord,
    make_engine,
    make_session_factory,
    repo,
    upgrade_to_head,
)

UPDATES_PER_ROUND = 4
READ_SECONDS = 2.0
# One statement, so one snapshot on every backend: both counts from the same instant.
COUNTS = text(
    "SELECT (SELECT count(*) FROM rounds WHERE run_id = :r AND status = 'committed'),"
    " (SELECT count(*) FROM client_updates WHERE run_id = :r)"
)


def write_rounds(url: str, run_id: str, stop: EventType, out: Any) -> None:
    """The coordinator's loop: start, then commit, one round after another until told."""
    engine = make_engine(url)
    factory = make_session_factory(engine)
    written, errors = 0, []
    try:
        while not stop.is_set():
            number = written + 1
            now = datetime.now(UTC)
            record = RoundRecord(
                number=number,
                started_at=now,
                finished_at=now,
                send_s=0.0,
                wait_s=0.0,
                merge_s=0.0,
                evaluate_s=0.0,
                metrics={"n": number},
                checkpoint_path=None,
                checkpoint_sha256=None,
                updates=tuple(
                    UpdateRecord(node_id=str(i), accepted=True, num_examples=10)
                    for i in range(UPDATES_PER_ROUND)
                ),
                evaluations=(EvaluationRecord("central", loss=1.0 / number, accuracy=0.5),),
            )
            with factory.begin() as s:
                repo.start_round(s, run_id, number, now)
            with factory.begin() as s:
                repo.commit_round(s, run_id, record)
            written = number
    except Exception as exc:  # reported to the test, which fails on it
        errors.append(repr(exc))
    finally:
        engine.dispose()
        out.put((written, errors))


def read_counts(
    url: str, run_id: str, deadline: float, seen: list[tuple[int, int]], errors: list[str]
) -> None:
    """The dashboard's loop: its own engine, short read-only transactions."""
    engine = make_engine(url)
    factory = make_session_factory(engine)
    try:
        while time.monotonic() < deadline:
            try:
                with factory.begin() as s:
                    rounds, updates = s.execute(COUNTS, {"r": run_id}).one()
                    repo.rounds_of(s, run_id)  # an ORM read too, as the pages do
                seen.append((rounds, updates))
            except Exception as exc:
                errors.append(repr(exc))
    finally:
        engine.dispose()


def wait_for_first_round(url: str, run_id: str, timeout: float = 60.0) -> None:
    engine = make_engine(url)
    try:
        give_up = time.monotonic() + timeout
        while time.monotonic() < give_up:
            with engine.connect() as conn:
                if conn.execute(COUNTS, {"r": run_id}).one()[0] > 0:
                    return
            time.sleep(0.02)
        raise AssertionError("the writer process committed nothing")
    finally:
        engine.dispose()


def test_reader_sees_rounds_grow_while_writer_commits(db_url: str) -> None:
    engine = make_engine(db_url)
    upgrade_to_head(engine)
    with make_session_factory(engine).begin() as s:
        run_id = repo.create_run(
            s,
            name="busy",
            config={},
            mode="global",
            optimizer="sgd",
            combiner="mean",
            num_rounds_planned=0,
            out_dir="/tmp",
        )
    engine.dispose()

    ctx = mp.get_context("spawn")  # a real second process, like the coordinator's
    stop, out = ctx.Event(), ctx.Queue()
    writer = ctx.Process(target=write_rounds, args=(db_url, run_id, stop, out))
    writer.start()
    try:
        wait_for_first_round(db_url, run_id)  # a spawned process takes ~1 s to start
        seen: list[list[tuple[int, int]]] = [[], []]
        read_errors: list[str] = []
        deadline = time.monotonic() + READ_SECONDS
        readers = [
            threading.Thread(target=read_counts, args=(db_url, run_id, deadline, s, read_errors))
            for s in seen
        ]
        for r in readers:
            r.start()
        for r in readers:
            r.join()
    finally:
        stop.set()
        written, write_errors = out.get(timeout=60)
        writer.join(timeout=60)

    assert write_errors == [] and read_errors == []
    assert not any("locked" in e for e in read_errors + write_errors)
    assert written >= 5, f"the writer committed only {written} rounds"
    for reads in seen:
        rounds = [r for r, _ in reads]
        assert rounds == sorted(rounds), "a reader saw the round count go backwards"
        # Whole rounds only: never a committed round without all its updates.
        assert all(u == r * UPDATES_PER_ROUND for r, u in reads)
        assert len(set(rounds)) >= 3, "reads did not overlap the writes"
    final = make_engine(db_url)
    with final.connect() as conn:
        assert conn.execute(COUNTS, {"r": run_id}).one() == (
            written,
            written * UPDATES_PER_ROUND,
        )
    final.dispose()
