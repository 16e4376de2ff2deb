"""runs/show/export where there is no run store: one line, exit 2, nothing created."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from typer.testing import CliRunner

from fedmerge.cli import app

runner = CliRunner()

COMMANDS = [["runs"], ["show", "abc123"], ["export", "abc123", "--to", "EXPORT"]]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: c[0])
def test_no_database_is_one_line_and_nothing_is_created(
    tmp_path: Path, command: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("FEDMERGE_DB_URL", raising=False)
    out = tmp_path / "never-ran"
    args = [a.replace("EXPORT", str(tmp_path / "export")) for a in command]
    result = runner.invoke(app, [*args, "--out-dir", str(out)])
    assert result.exit_code == 2
    assert result.output.strip().count("\n") == 0, result.output
    assert "no run store" in result.output and str(out / "fedmerge.db") in result.output
    assert "Traceback" not in result.output
    assert not out.exists() and not (tmp_path / "export").exists()


def test_a_database_without_fedmerge_tables_is_said_not_migrated(tmp_path: Path) -> None:
    db = tmp_path / "fedmerge.db"
    engine = create_engine(f"sqlite:///{db}")
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE unrelated (x INTEGER)"))
    engine.dispose()
    result = runner.invoke(app, ["runs", "--out-dir", str(tmp_path)])
    assert result.exit_code == 2 and "holds no fedmerge run store" in result.output
    assert "no such table" not in result.output
