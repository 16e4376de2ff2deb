"""Issue 13's dashboard doors: headers on every answer, Host guard, token errors, overflow."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from dashboard.app import create_app
from dashboard.security import CSP, allowed_hosts
from dashboard.server import serve, serve_in_thread
from dashboard.settings import DashboardConfigError, DashboardSettings
from tests.dashboard import factories
from tests.dashboard.conftest import TOKEN, AppFactory

SECRET_SHORT = "sh0rt!"
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def run_id(memory_store: sessionmaker[Session]) -> str:
    with memory_store.begin() as s:
        run = factories.create_run(s)
        factories.commit_round(s, run, factories.round_record(1))
    return run


@pytest.mark.parametrize("path", ["/", "/runs/{run}", "/api/runs", "/static/style.css",
                                  "/no/such/page", "/runs/{run}/plots/loss.svg"])
@pytest.mark.parametrize("token", [None, TOKEN])
def test_every_answer_carries_the_browser_headers(
    memory_app: AppFactory, run_id: str, path: str, token: str | None
) -> None:
    response = memory_app(token=token).get(path.format(run=run_id))  # 200, 401 or 404
    assert response.headers["content-security-policy"] == CSP
    assert "'unsafe-inline'" not in CSP and "default-src 'self'" in CSP
    assert response.headers["referrer-policy"] == "no-referrer"
    assert response.headers["x-frame-options"] == "DENY"
    assert response.headers["x-content-type-options"] == "nosniff"


def test_pages_have_no_inline_script_or_style(memory_app: AppFactory, run_id: str) -> None:
    client = memory_app()
    for path in ("/", f"/runs/{run_id}", "/compare?runs=" + run_id, "/nothing"):
        html = client.get(path).text
        assert "<script>" not in html and "<script " not in html.replace(
            '<script src="/static/', "")
        assert "<style" not in html and " style=" not in html


@pytest.mark.parametrize("host", ["evil.example:8080", "127.0.0.1:9999", "localhost",
                                  "attacker.test", "127.0.0.1.nip.io:8080", ""])
def test_foreign_host_headers_get_400(memory_app: AppFactory, host: str) -> None:
    response = memory_app().get("/api/runs", headers={"Host": host})
    assert response.status_code == 400
    assert "digits-adam" not in response.text
    assert response.headers["x-frame-options"] == "DENY"


@pytest.mark.parametrize("host", ["127.0.0.1:8080", "localhost:8080", "[::1]:8080",
                                  "LOCALHOST:8080"])
def test_loopback_aliases_on_the_bound_port_are_answered(
    memory_app: AppFactory, run_id: str, host: str
) -> None:
    response = memory_app().get("/api/runs", headers={"Host": host})
    assert response.status_code == 200 and response.json()["count"] == 1


def test_allowed_hosts_are_configurable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FEDMERGE_DASHBOARD_ALLOWED_HOSTS", "dash.lan, 10.0.0.5:9000")
    settings = DashboardSettings.from_env(db_url="sqlite://", host="0.0.0.0", token=TOKEN)
    assert allowed_hosts(settings) == {"dash.lan", "10.0.0.5:9000"}
    with TestClient(create_app(settings), base_url="http://dash.lan:1234") as client:
        bearer = {"Authorization": f"Bearer {TOKEN}"}
        assert client.get("/api/runs", headers=bearer).status_code == 503  # no tables: past
        assert client.get("/api/runs", headers={"Host": "10.0.0.5:9000", **bearer}
                          ).status_code == 503
        assert client.get("/api/runs", headers={"Host": "10.0.0.5:9001"}).status_code == 400
        assert client.get("/api/runs", headers={"Host": "other.lan"}).status_code == 400
    # a wildcard bind with a token and no list: the token guards it, any name reaches it
    assert allowed_hosts(DashboardSettings(db_url="x", host="0.0.0.0", token=TOKEN)) is None


def test_a_too_short_token_is_one_line_that_never_echoes_it() -> None:
    with pytest.raises(DashboardConfigError) as caught:
        serve_in_thread("sqlite://", "127.0.0.1", 0, token=SECRET_SHORT)
    message = str(caught.value)
    assert "token" in message and "at least 8" in message
    assert SECRET_SHORT not in message and "\n" not in message
    with pytest.raises(DashboardConfigError):
        serve("sqlite://", "127.0.0.1", 0, token=SECRET_SHORT)


def test_the_cli_says_it_in_one_line_without_the_token(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "fedmerge.cli", "dashboard", "--out-dir", str(tmp_path),
         "--port", "0"],
        env={**os.environ, "FEDMERGE_DASHBOARD_TOKEN": SECRET_SHORT, "PYTHONPATH": str(ROOT)},
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 2
    assert SECRET_SHORT not in result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().count("\n") == 0 and "at least 8" in result.stderr


@pytest.mark.parametrize("number", [2**64, 2**63, 2**31, 10**30])
def test_a_checkpoint_number_past_the_column_is_404(
    memory_app: AppFactory, run_id: str, number: int
) -> None:
    response = memory_app().get(f"/runs/{run_id}/checkpoints/{number}.safetensors")
    assert response.status_code == 404


def test_no_code_or_style_from_another_origin() -> None:
    """uPlot is vendored with its licence; no template loads anything from a CDN."""
    package = ROOT / "dashboard"
    vendor = package / "static" / "vendor" / "uplot"
    assert {"uPlot.iife.min.js", "uPlot.min.css", "LICENSE"} <= {p.name for p in vendor.iterdir()}
    assert "MIT" in (vendor / "LICENSE").read_text()
    for template in (package / "templates").glob("*.html"):
        text = template.read_text()
        assert not re.search(r'(src|href)="(https?:)?//', text), template.name
