"""A coordinator killed with SIGKILL mid-round resumes to the same model, every round in
the database once; damaged checkpoints are found by their hash."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
import torch

from coordinator.checkpoints import load_checkpoint
from coordinator.config import parse_run_config
from coordinator.federation import run_federation
from coordinator.runs import ResumeError
from coordinator.simulation import simulate
from coordinator.store import RoundRecord, make_engine, make_session_factory, repo, upgrade_to_head

pytestmark = pytest.mark.simulation

RUN = {
    "num-server-rounds": 6, "num-clients": 3, "min-nodes": 3, "optimizer": "adam",
    "server-lr": 0.05, "local-epochs": 3, "seed": 7,
}


def _final(db_url: str, run_id: str) -> tuple[dict[str, torch.Tensor], list, list]:
    engine = make_engine(db_url)
    with make_session_factory(engine)() as s:
        last = repo.last_committed_round(s, run_id)
        rounds = list(repo.rounds_of(s, run_id))
        events = list(repo.events_of(s, run_id))
    engine.dispose()
    assert last is not None
    params = load_checkpoint(Path(last.checkpoint_path), last.checkpoint_sha256).params
    return params, rounds, events


def _kill_mid_round(out: Path, in_flight: int) -> None:
    """Start a run in a child process; SIGKILL its whole process group while round
    ``in_flight`` is running (the rounds before it committed)."""
    args = [sys.executable, "-m", "fedmerge.cli", "demo", "--no-dashboard",
            "--out-dir", str(out), "--clients", "3", "--rounds", "6", "--optimizer", "adam",
            "--server-lr", "0.05", "--seed", "7", "--set", "local-epochs=3", "--set", "min-nodes=3"]
    proc = subprocess.Popen(args, start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    db = out / "fedmerge.db"
    deadline = time.monotonic() + 180
    try:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                pytest.fail(f"the run ended (rc {proc.returncode}) before it could be killed")
            if db.exists():
                try:
                    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as c:
                        row = c.execute("select status from rounds where number = ?",
                                        (in_flight,)).fetchone()
                except sqlite3.OperationalError:
                    row = None  # schema not created yet
                if row and row[0] == "running":
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait(10)
                    return
            time.sleep(0.01)
        pytest.fail(f"round {in_flight} never started")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> dict[str, torch.Tensor]:
    out = tmp_path_factory.mktemp("straight")
    res = simulate(parse_run_config({**RUN, "out-dir": str(out)}), num_clients=3)
    params, rounds, _ = _final(res.db_url, res.run_id)
    assert [r.number for r in rounds] == list(range(1, 7))
    return params


def _resume(out: Path):
    return simulate(
        parse_run_config({**RUN, "out-dir": str(out), "resume-run": "latest"}), num_clients=3
    )


def test_killed_coordinator_resumes_to_the_same_model(tmp_path: Path, uninterrupted) -> None:
    _kill_mid_round(tmp_path, in_flight=4)
    res = _resume(tmp_path)
    params, rounds, events = _final(res.db_url, res.run_id)
    assert [(r.number, r.status) for r in rounds] == [(n, "committed") for n in range(1, 7)]
    assert next(r for r in rounds if r.number == 4).attempts == 2
    assert any(e.kind == "round-aborted" and "4" in e.message for e in events)
    assert any(e.kind == "resumed" for e in events)
    for k, t in uninterrupted.items():
        torch.testing.assert_close(params[k], t, atol=1e-5, rtol=1e-4)


def test_corrupt_newest_checkpoint_falls_back_to_the_one_before(
    tmp_path: Path, uninterrupted
) -> None:
    _kill_mid_round(tmp_path, in_flight=4)
    engine = make_engine(f"sqlite:///{tmp_path / 'fedmerge.db'}")
    with make_session_factory(engine)() as s:
        run = repo.latest_unfinished_run(s)
        r3 = next(r for r in repo.committed_rounds(s, run.id) if r.number == 3)
    engine.dispose()
    ckpt = Path(r3.checkpoint_path)
    data = bytearray(ckpt.read_bytes())
    data[-1] ^= 0xFF
    ckpt.write_bytes(bytes(data))

    res = _resume(tmp_path)
    params, rounds, events = _final(res.db_url, res.run_id)
    errors = [e.message for e in events if e.kind == "error"]
    assert any(str(ckpt) in m and "hash mismatch" in m for m in errors), errors
    assert [r.number for r in rounds if r.status == "committed"] == list(range(1, 7))
    for k, t in uninterrupted.items():
        torch.testing.assert_close(params[k], t, atol=1e-5, rtol=1e-4)


def test_no_usable_checkpoint_is_said_clearly(tmp_path: Path) -> None:
    cfg = parse_run_config({**RUN, "out-dir": str(tmp_path)})
    engine = make_engine(f"sqlite:///{tmp_path / 'fedmerge.db'}")
    upgrade_to_head(engine)
    gone = tmp_path / "checkpoints" / "round-00002.safetensors"
    with make_session_factory(engine).begin() as s:
        run_id = repo.create_run(
            s, name="killed", config=cfg.as_run_config(), mode="global", optimizer="adam",
            combiner="mean", num_rounds_planned=6, out_dir=str(tmp_path),
        )
        now = datetime.now(UTC)
        repo.start_round(s, run_id, 2, now)
        record = RoundRecord(2, now, now, 0, 0, 0, 0, {}, str(gone), "0" * 64, (), ())
        repo.commit_round(s, run_id, record)
        repo.start_round(s, run_id, 3, now)  # in flight when it died
    engine.dispose()
    resume = parse_run_config({**RUN, "out-dir": str(tmp_path), "resume-run": run_id[:8]})
    with pytest.raises(ResumeError, match="no usable checkpoint") as exc:
        run_federation(grid=None, cfg=resume)  # fails before the grid is used
    assert str(gone) in str(exc.value) and "missing" in str(exc.value)
