"""What a resume takes from the stored run and what from the command line, and what it
says when there is nothing to resume or nothing usable to resume from."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from typer.testing import CliRunner

from coordinator.config import parse_run_config
from coordinator.federation import run_federation
from coordinator.runs import ResumeError, resumed_config
from coordinator.store import (
    RoundRecord,
    make_engine,
    make_session_factory,
    repo,
    upgrade_to_head,
)
from fedmerge.cli import app

runner = CliRunner()


def _store(out: Path, *, rounds: int = 8, status: str | None = None, **config) -> str:
    """A run of ``rounds`` planned rounds (its stored config says so), left running."""
    cfg = parse_run_config({"num-server-rounds": rounds, "out-dir": str(out), "seed": 3,
                            "optimizer": "adam", **config})
    engine = make_engine(f"sqlite:///{out / 'fedmerge.db'}")
    upgrade_to_head(engine)
    with make_session_factory(engine).begin() as s:
        run_id = repo.create_run(
            s, name="planned", config=cfg.as_run_config(), mode="global", optimizer="adam",
            combiner="mean", num_rounds_planned=rounds, out_dir=str(out),
        )
        if status:
            repo.finish_run(s, run_id, status)
    engine.dispose()
    return run_id


def _resumed(out: Path, **given) -> tuple[str, object]:
    cfg = parse_run_config({"resume-run": "latest", "out-dir": str(out), "db": "", **given})
    engine = make_engine(f"sqlite:///{out / 'fedmerge.db'}")
    try:
        with make_session_factory(engine).begin() as s:
            return resumed_config(s, cfg)
    finally:
        engine.dispose()


def test_resume_keeps_the_planned_rounds_and_the_stored_config(tmp_path: Path) -> None:
    run_id = _store(tmp_path, rounds=8)
    got_id, cfg = _resumed(tmp_path)
    assert got_id == run_id
    assert cfg.num_server_rounds == 8  # not the default 5
    assert (cfg.optimizer, cfg.seed) == ("adam", 3)


def test_resume_overrides_only_the_keys_given(tmp_path: Path) -> None:
    _store(tmp_path, rounds=8, **{"round-timeout": 30.0})
    _, cfg = _resumed(tmp_path, **{"num-server-rounds": 12})
    assert cfg.num_server_rounds == 12 and cfg.round_timeout == 30.0


def test_resume_says_which_keys_it_overrides(tmp_path: Path) -> None:
    from fedmerge import demo

    _store(tmp_path, rounds=8)
    given = parse_run_config({"resume-run": "latest", "out-dir": str(tmp_path),
                              "num-server-rounds": 10})
    with demo.console.capture() as captured:
        cfg = demo._checked_store(given)
    assert cfg.num_server_rounds == 10
    assert "overriding num-server-rounds 8 -> 10" in captured.get()
    with demo.console.capture() as captured:
        demo._checked_store(parse_run_config({"resume-run": "latest", "out-dir": str(tmp_path)}))
    assert "with its stored config" in captured.get() and "overriding" not in captured.get()


def test_resume_latest_without_an_unfinished_run_lists_the_latest(tmp_path: Path) -> None:
    done = _store(tmp_path, rounds=2, status="completed")
    result = runner.invoke(app, ["resume", "--out-dir", str(tmp_path)])
    assert result.exit_code == 2
    assert "no unfinished run to resume" in result.output
    assert done[:8] in result.output and "completed" in result.output


def test_resume_latest_in_an_empty_store_says_it_has_no_runs(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'fedmerge.db'}")
    upgrade_to_head(engine)
    engine.dispose()
    with pytest.raises(ResumeError, match="no unfinished run to resume: the database has no"):
        _resumed(tmp_path)


def test_resume_without_a_usable_checkpoint_marks_the_run_failed(tmp_path: Path) -> None:
    run_id = _store(tmp_path, rounds=6)
    gone = tmp_path / "checkpoints" / "round-00002.safetensors"
    engine = make_engine(f"sqlite:///{tmp_path / 'fedmerge.db'}")
    sessions = make_session_factory(engine)
    with sessions.begin() as s:
        now = datetime.now(UTC)
        repo.start_round(s, run_id, 2, now)
        repo.commit_round(s, run_id, RoundRecord(2, now, now, 0, 0, 0, 0, {}, str(gone),
                                                 "0" * 64, (), ()))
    resume = parse_run_config({"out-dir": str(tmp_path), "resume-run": run_id[:8]})
    with pytest.raises(ResumeError, match="no usable checkpoint"):
        run_federation(grid=None, cfg=resume)  # fails before the grid is used
    with sessions() as s:
        run = repo.get_run(s, run_id)
        events = [e.message for e in repo.events_of(s, run_id) if e.kind == "error"]
    engine.dispose()
    assert run.status == "failed"
    assert "no usable checkpoint" in run.error and str(gone) in run.error
    assert any("no usable checkpoint" in m for m in events)


def test_a_resume_through_flower_keeps_the_stored_rounds_unless_given(tmp_path: Path) -> None:
    """Flower's run_config holds pyproject's num-server-rounds (5) whether or not the user
    gave it; only the keys of the user's --run-config override the stored config."""
    from coordinator.config import resume_overrides
    from coordinator.runs import RESUME_OVERRIDABLE
    from coordinator.server_app import run_config_of

    _store(tmp_path, rounds=8)
    fused = {**parse_run_config({}).as_run_config(), "resume-run": "latest",
             "out-dir": str(tmp_path)}
    stored = _resumed(tmp_path)[1].as_run_config()
    kept = run_config_of(fused, overridden={"resume-run", "out-dir"})
    assert "num-server-rounds" not in resume_overrides(stored, kept, RESUME_OVERRIDABLE)
    given = run_config_of({**fused, "num-server-rounds": 12},
                          overridden={"resume-run", "num-server-rounds"})
    assert resume_overrides(stored, given, RESUME_OVERRIDABLE)["num-server-rounds"] == (8, 12)
    # a new run takes the whole run_config, pyproject's defaults included
    new = run_config_of({**fused, "resume-run": ""}, overridden=set())
    assert new.num_server_rounds == 5 and new.out_dir == str(tmp_path)
