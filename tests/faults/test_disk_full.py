"""The disk fills up while a round's checkpoint is written: the round is not committed,
the previous checkpoint stays valid, the error is recorded, and a resume continues once
there is space again. The full disk is a write hook: every fsync of a checkpoint file
fails with ENOSPC while the disk is "full" (what a filesystem that allocates late says)."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from coordinator.checkpoints import CheckpointWriteError, load_checkpoint
from coordinator.config import parse_run_config
from coordinator.simulation import simulate
from coordinator.store import make_engine, make_session_factory, repo

pytestmark = pytest.mark.simulation

RUN = {"num-server-rounds": 3, "num-clients": 3, "min-nodes": 3, "local-epochs": 1,
       "optimizer": "adam", "server-lr": 0.05, "seed": 5}


class FullDisk:
    """os.fsync that fails with ENOSPC for files under ``root`` named like a checkpoint of
    round ``from_round`` or later (the test takes the hook away when space is back)."""

    def __init__(self, root: Path, from_round: int) -> None:
        self.root, self.from_round = str(root), from_round
        self.refused: list[str] = []
        self._fsync = os.fsync

    def fsync(self, fd: int) -> None:
        target = os.readlink(f"/proc/self/fd/{fd}")
        name = os.path.basename(target)
        if (target.startswith(self.root) and name.startswith(".round-")
                and int(name[len(".round-"):][:5]) >= self.from_round):
            self.refused.append(target)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self._fsync(fd)


def _store(out: Path, run_id: str):
    engine = make_engine(f"sqlite:///{out / 'fedmerge.db'}")
    with make_session_factory(engine)() as s:
        run = repo.get_run(s, run_id)
        rounds = list(repo.rounds_of(s, run_id))
        updates = list(repo.updates_of(s, run_id))
        events = list(repo.events_of(s, run_id))
    engine.dispose()
    return run, rounds, updates, events


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc/self/fd")
def test_disk_full_at_a_checkpoint_then_resume(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    disk = FullDisk(tmp_path / "checkpoints", from_round=2)
    monkeypatch.setattr(os, "fsync", disk.fsync)
    cfg = parse_run_config({**RUN, "out-dir": str(tmp_path)})
    with pytest.raises(CheckpointWriteError) as raised:
        simulate(cfg, num_clients=3)
    assert raised.value.errno == errno.ENOSPC and disk.refused

    engine = make_engine(f"sqlite:///{tmp_path / 'fedmerge.db'}")
    with make_session_factory(engine)() as s:
        run = repo.latest_unfinished_run(s)
    engine.dispose()
    run, rounds, _, events = _store(tmp_path, run.id)
    assert run.status == "failed"
    assert "No space left on device" in run.error and "round-00002" in run.error
    assert [(r.number, r.status) for r in rounds] == [(1, "committed"), (2, "aborted")]
    assert any(e.kind == "error" and "No space" in e.message for e in events)
    ck_dir = tmp_path / "checkpoints" / run.id
    assert [p.name for p in ck_dir.iterdir()] == ["round-00001.safetensors"]  # nothing partial
    r1 = rounds[0]
    assert load_checkpoint(Path(r1.checkpoint_path), r1.checkpoint_sha256).round_number == 1

    monkeypatch.undo()  # space is back
    resumed = simulate(parse_run_config({**RUN, "out-dir": str(tmp_path), "resume-run": "latest"}),
                       num_clients=3)
    assert resumed.run_id == run.id and resumed.rounds == 3
    run, rounds, updates, _ = _store(tmp_path, run.id)
    assert run.status == "completed"
    assert [(r.number, r.status) for r in rounds] == [(n, "committed") for n in range(1, 4)]
    assert [sum(u.round_number == n for u in updates) for n in range(1, 4)] == [3] * 3
    for r in rounds:
        ck = load_checkpoint(Path(r.checkpoint_path), r.checkpoint_sha256)
        assert ck.round_number == r.number
