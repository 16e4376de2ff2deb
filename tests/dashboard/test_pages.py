"""The HTML pages: the real run's pages agree with the DB; edge cases on in-memory stores."""

from __future__ import annotations

import hashlib
import re
import sqlite3
from pathlib import Path

from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from coordinator.store import repo
from coordinator.store.models import RoundRow
from dashboard.app import create_app
from dashboard.settings import DashboardSettings
from tests.dashboard import factories
from tests.dashboard.conftest import BASE_URL, AppFactory, RealRun


def _rows(html: str, table_id: str) -> int:
    table = re.search(rf'<table class="table" id="{table_id}"[^>]*>(.*?)</table>', html, re.S)
    assert table is not None, table_id
    return table.group(1).split("<tbody>")[1].count("<tr")


def test_runs_page_lists_the_real_run(real_client: TestClient, real_run: RealRun) -> None:
    html = real_client.get("/").text
    assert f'href="/runs/{real_run.run_id}"' in html
    assert real_run.run_id[:8] in html and "digits-adam-3" in html
    assert "3 / 3" in html and "completed" in html


def test_run_page_shows_what_the_api_says(real_client: TestClient, real_run: RealRun) -> None:
    response = real_client.get(f"/runs/{real_run.run_id}")
    assert response.status_code == 200
    html = response.text
    api = real_client.get(f"/api/runs/{real_run.run_id}").json()
    assert f'<span id="rounds-done">{api["rounds_done"]}</span>' in html
    assert f'{100 * api["best_central_accuracy"]:.1f}%' in html
    assert _rows(html, "rounds") == 1 + 3  # the initial model, then rounds 1-3
    assert _rows(html, "clients") == 3
    assert _rows(html, "checkpoints") == 3
    for name, plot in (("accuracy", "central-accuracy"), ("loss", "central-loss"),
                       ("durations", "duration-merge-r3")):
        src = f"/runs/{real_run.run_id}/plots/{name}.svg"
        assert f'<img class="fallback" src="{src}"' in html  # the no-JavaScript plots
        assert f'<div class="chart" data-chart="{name}"' in html  # the interactive ones
        assert f'id="{plot}"' in real_client.get(src).text


def test_checkpoint_download_is_the_committed_file(
    real_client: TestClient, real_run: RealRun, real_session: Session
) -> None:
    digest = real_session.scalar(
        select(RoundRow.checkpoint_sha256).where(
            RoundRow.run_id == real_run.run_id, RoundRow.number == 2
        )
    )
    response = real_client.get(f"/runs/{real_run.run_id}/checkpoints/2.safetensors")
    assert response.status_code == 200
    assert hashlib.sha256(response.content).hexdigest() == digest
    assert "attachment" in response.headers["content-disposition"]


def test_plot_svg_route(real_client: TestClient, real_run: RealRun) -> None:
    response = real_client.get(f"/runs/{real_run.run_id}/plots/accuracy.svg")
    assert response.headers["content-type"] == "image/svg+xml"
    assert response.text.startswith("<svg")
    assert real_client.get(f"/runs/{real_run.run_id}/plots/nope.svg").status_code == 404


def test_unknown_run_is_an_html_404(real_client: TestClient) -> None:
    for path in ("/runs/feedbeef", "/runs/not-hex", "/runs/feedbeef/checkpoints/1.safetensors",
                 "/runs/feedbeef/plots/accuracy.svg", "/no/such/page"):
        response = real_client.get(path)
        assert response.status_code == 404, path
        assert response.headers["content-type"].startswith("text/html")
        assert "Traceback" not in response.text and "404" in response.text


def test_missing_round_or_file_is_404(
    memory_app: AppFactory, memory_store: sessionmaker[Session], tmp_path: Path
) -> None:
    paths = []
    with memory_store.begin() as s:
        run_id = factories.create_run(s, out_dir=str(tmp_path))
        for n in (1, 2):
            ckpt = factories.write_checkpoint(tmp_path, n)
            factories.commit_round(s, run_id, factories.round_record(n, checkpoint=ckpt))
            paths.append(Path(ckpt[0]))
    paths[1].unlink()  # round 2's file is gone
    client = memory_app()
    assert client.get(f"/runs/{run_id}/checkpoints/1.safetensors").status_code == 200
    assert client.get(f"/runs/{run_id}/checkpoints/2.safetensors").status_code == 404
    assert client.get(f"/runs/{run_id}/checkpoints/9.safetensors").status_code == 404
    assert client.get(f"/runs/{run_id}/checkpoints/x.safetensors").status_code == 404
    html = client.get(f"/runs/{run_id}").text
    assert f'href="/runs/{run_id}/checkpoints/1.safetensors"' in html
    assert f'href="/runs/{run_id}/checkpoints/2.safetensors"' not in html
    assert "file missing" in html


def test_empty_store(memory_app: AppFactory) -> None:
    client = memory_app()
    assert "No runs yet" in client.get("/").text
    assert client.get("/api/runs").json() == {
        "data": [], "count": 0, "total": 0, "page": 1, "pages": 1
    }


def test_running_run_with_rejections_and_an_aborted_round(
    memory_app: AppFactory, memory_store: sessionmaker[Session]
) -> None:
    with memory_store.begin() as s:
        run_id = factories.create_run(s, rounds_planned=5)
        factories.commit_round(s, run_id, factories.round_record(1, reject="non-finite values"))
        factories.commit_round(s, run_id, factories.round_record(2))
        repo.discard_rounds_after(s, run_id, 1)  # a resume threw round 2 away
        repo.start_round(s, run_id, 3, factories.round_record(3).started_at)  # in flight
    client = memory_app()
    html = client.get(f"/runs/{run_id}").text
    assert '<span id="rounds-done">1</span>' in html
    assert "non-finite values" in html and "aborted" in html and "running" in html
    (node,) = [c for c in client.get(f"/api/runs/{run_id}/clients").json()["data"]
               if c["rejected"]]
    assert node["rejections"] == [{"reason": "non-finite values", "count": 1}]
    assert node["rounds_participated"] == 1  # round 2's updates no longer count
    evals = client.get(f"/api/runs/{run_id}/evaluations").json()["data"]
    assert {e["round_number"] for e in evals} == {0, 1}
    rounds = client.get(f"/api/runs/{run_id}/rounds").json()["data"]
    assert [(r["number"], r["status"]) for r in rounds] == [
        (1, "committed"), (2, "aborted"), (3, "running")
    ]


def test_pages_escape_what_the_store_holds(
    memory_app: AppFactory, memory_store: sessionmaker[Session]
) -> None:
    with memory_store.begin() as s:
        run_id = factories.create_run(s, name="<script>alert(1)</script>")
        repo.add_event(s, run_id, "info", "<b>bold</b>")
    html = memory_app().get(f"/runs/{run_id}").text
    assert "<script>alert(1)</script>" not in html and "<b>bold</b>" not in html
    assert "&lt;script&gt;" in html


def test_an_unreadable_store_is_a_503_that_retries(tmp_path: Path) -> None:
    """A store file without fedmerge's tables yet (the coordinator is still migrating)."""
    sqlite3.connect(tmp_path / "empty.db").close()
    app = create_app(DashboardSettings(db_url=f"sqlite:///{tmp_path / 'empty.db'}"))
    with TestClient(app, base_url=BASE_URL) as client:
        page = client.get("/")
        assert page.status_code == 503 and page.headers["retry-after"]
        assert "no such table" in page.text and "Traceback" not in page.text
        api = client.get("/api/runs")
        assert api.status_code == 503 and "cannot be read" in api.json()["detail"]
