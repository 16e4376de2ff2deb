"""The fedmerge command: help, config errors, and runs/show/export over a real store."""

from __future__ import annotations

import csv
import json
from datetime import UTC, datetime
from pathlib import Path

import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from coordinator.checkpoints import save_checkpoint
from coordinator.store import (
    EvaluationRecord,
    RoundRecord,
    UpdateRecord,
    make_engine,
    make_session_factory,
    repo,
    upgrade_to_head,
)
from fedmerge.cli import app

runner = CliRunner()


def test_demo_help_lists_the_knobs() -> None:
    result = runner.invoke(app, ["demo", "--help"])
    assert result.exit_code == 0
    for option in ("--clients", "--rounds", "--optimizer", "--mode", "--partition", "--set"):
        assert option in result.output


def test_bad_config_exits_2_naming_the_key(tmp_path: Path) -> None:
    result = runner.invoke(
        app, ["demo", "--no-dashboard", "--out-dir", str(tmp_path), "--set", "server-lr=-1"]
    )
    assert result.exit_code == 2
    assert "server-lr" in result.output
    result = runner.invoke(app, ["demo", "--out-dir", str(tmp_path), "--set", "nonsense=1"])
    assert result.exit_code == 2 and "nonsense" in result.output


def _filled_store(out: Path) -> tuple[str, dict[str, torch.Tensor]]:
    engine = make_engine(f"sqlite:///{out / 'fedmerge.db'}")
    upgrade_to_head(engine)
    params = {"fc.weight": torch.randn(3, 2), "fc.bias": torch.randn(3)}
    with make_session_factory(engine).begin() as s:
        run_id = repo.create_run(
            s, name="cli-test", config={"seed": 0}, mode="global", optimizer="adam",
            combiner="mean", num_rounds_planned=2, out_dir=str(out),
        )
        for n in (1, 2):
            now = datetime.now(UTC)
            repo.start_round(s, run_id, n, now)
            path, digest = save_checkpoint(
                out / "checkpoints", round_number=n, params={k: v * n for k, v in params.items()},
                opt_state_step=n, opt_slots={},
            )
            repo.commit_round(s, run_id, RoundRecord(
                n, now, now, 0.001, 0.1, 0.002, 0.05, {"train-loss": 1.0 / n}, str(path), digest,
                (UpdateRecord("11", True, num_examples=5), UpdateRecord("12", False, "nan")),
                (EvaluationRecord("central", 0.5, 0.5 + n / 10, 100),),
            ))
        repo.finish_run(s, run_id, "completed")
    engine.dispose()
    return run_id, {k: v * 2 for k, v in params.items()}


def test_runs_show_and_export(tmp_path: Path) -> None:
    run_id, final = _filled_store(tmp_path)
    out = ["--out-dir", str(tmp_path)]
    listing = runner.invoke(app, ["runs", *out])
    assert listing.exit_code == 0 and run_id[:8] in listing.output and "2/2" in listing.output
    shown = runner.invoke(app, ["show", run_id[:6], *out])
    assert shown.exit_code == 0 and "0.700" in shown.output  # round 2: central accuracy
    assert "round 2 node 12 rejected: nan" in shown.output

    exported = runner.invoke(app, ["export", run_id[:6], "--to", str(tmp_path / "x"), *out])
    assert exported.exit_code == 0, exported.output
    model = load_file(next((tmp_path / "x").glob("*-model.safetensors")))
    for k, t in final.items():
        torch.testing.assert_close(model[k], t)
    rows = list(csv.DictReader(next((tmp_path / "x").glob("*-history.csv")).open()))
    assert [r["round"] for r in rows] == ["1", "2"] and rows[1]["rejected"] == "1"
    history = json.loads(next((tmp_path / "x").glob("*-history.json")).read_text())
    assert history["run"] == run_id and len(history["rounds"]) == 2


def test_an_unreachable_database_is_said_before_anything_starts(tmp_path: Path) -> None:
    url = "postgresql+psycopg://nobody@127.0.0.1:9/nowhere"  # port 9: nothing listens
    result = runner.invoke(app, ["demo", "--no-dashboard", "--out-dir", str(tmp_path),
                                 "--db", url, "--rounds", "1"])
    assert result.exit_code == 2
    assert "127.0.0.1:9" in result.output and "nowhere" in result.output


def test_resuming_a_run_that_is_not_there_exits_2(tmp_path: Path) -> None:
    result = runner.invoke(app, ["resume", "abc123", "--out-dir", str(tmp_path)])
    assert result.exit_code == 2 and "no run 'abc123'" in result.output
