"""Private material owner-only (files 0600, directories 0700) whatever the umask:
certificates' keys, the run store's SQLite files, the out dir and the checkpoints."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from sqlalchemy import text

from coordinator.checkpoints import save_checkpoint
from coordinator.config import parse_run_config
from coordinator.federation import run_federation
from coordinator.runs import ResumeError
from coordinator.store import migrated_engine
from fedmerge.certs import make_certs


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def umask_000() -> Iterator[None]:
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


def test_certs_force_over_world_readable_keys_leaves_them_0600(tmp_path: Path) -> None:
    paths = make_certs(tmp_path / "certs", nodes=1)
    private = [paths.ca_key, paths.server_key, paths.node_keys[0][0]]
    for p in private:
        os.chmod(p, 0o644)
    make_certs(tmp_path / "certs", nodes=1, force=True)
    assert {str(p): mode(p) for p in private} == {str(p): 0o600 for p in private}
    assert mode(paths.ca_cert) == 0o644 and mode(paths.node_keys[0][1]) == 0o644


def test_certs_directory_is_0700_under_umask_000(tmp_path: Path, umask_000: None) -> None:
    paths = make_certs(tmp_path / "deep" / "certs", nodes=1)
    assert mode(tmp_path / "deep" / "certs") == 0o700
    assert mode(tmp_path / "deep") == 0o700
    assert mode(paths.server_key) == 0o600 and mode(paths.node_keys[0][0]) == 0o600
    assert mode(paths.server_cert) == 0o644  # public: readable, never writable by others


def test_sqlite_store_and_its_wal_are_0600_under_umask_000(
    tmp_path: Path, umask_000: None
) -> None:
    out = tmp_path / "out"
    with migrated_engine(f"sqlite:///{out / 'fedmerge.db'}") as engine, engine.connect() as c:
        c.execute(text("CREATE TABLE probe (x INTEGER)"))
        c.execute(text("INSERT INTO probe VALUES (1)"))
        c.commit()
        files = sorted(out.glob("fedmerge.db*"))
        assert [f.name for f in files] == ["fedmerge.db", "fedmerge.db-shm", "fedmerge.db-wal"]
        assert {f.name: mode(f) for f in files} == {f.name: 0o600 for f in files}
    assert mode(out) == 0o700


def test_checkpoint_directories_0700_and_files_0600_under_umask_000(
    tmp_path: Path, umask_000: None
) -> None:
    run_dir = tmp_path / "out" / "checkpoints" / "run1"
    path, _ = save_checkpoint(run_dir, round_number=1, params={"w": torch.ones(3)},
                              opt_state_step=0, opt_slots={})
    assert mode(path) == 0o600
    assert [mode(d) for d in (run_dir, run_dir.parent, run_dir.parent.parent)] == [0o700] * 3


def test_the_coordinators_out_dir_is_0700_under_umask_000(
    tmp_path: Path, umask_000: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("FEDMERGE_DB_URL", raising=False)
    out = tmp_path / "runs" / "out"
    cfg = parse_run_config({"out-dir": str(out), "resume-run": "nothing-here"})
    with pytest.raises(ResumeError):
        run_federation(grid=None, cfg=cfg)  # stops before the grid is used
    assert mode(out) == 0o700 and mode(out.parent) == 0o700
    assert mode(out / "fedmerge.db") == 0o600
