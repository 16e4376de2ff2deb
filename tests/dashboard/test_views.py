"""Runs list search/filter/sort/page, comparison, client and round drill-down, downloads."""

from __future__ import annotations

import csv
import dataclasses
import io
import xml.etree.ElementTree as ET
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy.orm import Session, sessionmaker

from coordinator.store import repo
from coordinator.store.models import RunRow
from tests.dashboard import factories
from tests.dashboard.conftest import AppFactory


@pytest.fixture
def three_runs(memory_store: sessionmaker[Session]) -> list[str]:
    """alpha (adam/mean, 2 rounds, a rejection), beta (sgd/median), gamma (running)."""
    ids = []
    with memory_store.begin() as s:
        for i, (name, optimizer, combiner) in enumerate(
            [("alpha", "adam", "mean"), ("beta", "sgd", "median"), ("gamma", "adam", "krum")]
        ):
            run_id = factories.create_run(s, name=name)
            row = s.get(RunRow, run_id)
            assert row is not None
            row.optimizer, row.combiner = optimizer, combiner
            row.config = {**row.config, "optimizer": optimizer, "combiner": combiner,
                          "dataset": "digits"}
            row.started_at = datetime(2025, 1, 1 + i, tzinfo=UTC)
            ids.append(run_id)
        factories.commit_round(s, ids[0], factories.round_record(1, reject="norm 9 > 3"))
        factories.commit_round(s, ids[0], factories.round_record(2))
        repo.finish_run(s, ids[0], "completed")
        repo.finish_run(s, ids[1], "failed", "boom")
        factories.commit_round(s, ids[2], factories.round_record(1))
    return ids


def _names(response: dict) -> list[str]:
    return [r["name"] for r in response["data"]]


def test_filters(memory_app: AppFactory, three_runs: list[str]) -> None:
    client = memory_app()
    get = lambda **p: client.get("/api/runs", params=p).json()  # noqa: E731
    assert _names(get()) == ["gamma", "beta", "alpha"]  # newest first
    assert _names(get(q="ALP")) == ["alpha"]
    assert _names(get(q=three_runs[1][:6])) == ["beta"]  # by id
    assert _names(get(status="failed")) == ["beta"]
    assert _names(get(optimizer="adam")) == ["gamma", "alpha"]
    assert _names(get(combiner="median")) == ["beta"]
    assert _names(get(task="digits")) == ["gamma", "beta", "alpha"]
    assert _names(get(task="cifar")) == []
    assert _names(get(since="2025-01-02")) == ["gamma", "beta"]
    assert _names(get(until="2025-01-02")) == ["beta", "alpha"]
    assert client.get("/api/runs", params={"since": "yesterday"}).status_code == 422


def test_sort_and_pages(memory_app: AppFactory, three_runs: list[str]) -> None:
    client = memory_app()
    get = lambda **p: client.get("/api/runs", params=p).json()  # noqa: E731
    assert _names(get(sort="name", order="asc")) == ["alpha", "beta", "gamma"]
    assert _names(get(sort="rounds_done")) == ["alpha", "gamma", "beta"]
    first = get(per_page=2, sort="name", order="asc")
    second = get(per_page=2, page=2, sort="name", order="asc")
    assert (first["total"], first["pages"], first["count"]) == (3, 2, 2)
    assert _names(first) + _names(second) == ["alpha", "beta", "gamma"]
    assert client.get("/api/runs", params={"sort": "id; drop"}).status_code == 422
    html = client.get("/", params={"per_page": 2}).text
    assert "page 1 of 2" in html and 'rel="next"' in html and "per_page=2" in html


def test_running_runs_list_their_workers(memory_app: AppFactory, three_runs: list[str]) -> None:
    runs = {r["name"]: r for r in memory_app().get("/api/runs").json()["data"]}
    assert [w["label"] for w in runs["gamma"]["workers"]] == ["p0", "p1", "p2"]
    assert [w["node_id"] for w in runs["gamma"]["workers"]] == list(factories.NODES)
    assert runs["alpha"]["workers"] == []  # finished: not active
    html = memory_app().get("/").text
    assert 'title="node 1111"' in html and "workers:" in html


def test_compare_highlights_the_config_differences(
    memory_app: AppFactory, three_runs: list[str]
) -> None:
    client = memory_app()
    alpha, beta, _ = three_runs
    api = client.get("/api/compare", params={"runs": [alpha, beta[:8]]}).json()
    assert [r["name"] for r in api["runs"]] == ["alpha", "beta"]
    assert api["differing_keys"] == ["combiner", "optimizer"]
    assert "dataset" in api["config_keys"] and "dataset" not in api["differing_keys"]
    html = client.get("/compare", params={"runs": [alpha, beta]}).text
    assert '<tr class="diff" data-key="optimizer">' in html
    assert '<tr class="same" data-key="dataset">' in html
    # beside the config: both runs' accuracy against wall-clock seconds, overlaid
    assert f'src="/compare/plots/accuracy-time.svg?runs={alpha}&amp;runs={beta}"' in html
    overlay = client.get("/compare/plots/accuracy-time.svg", params={"runs": [alpha, beta]})
    assert overlay.headers["content-type"].startswith("image/svg+xml")
    svg = ET.fromstring(overlay.text)
    for run_id, points in ((alpha, 3), (beta, 1)):  # round 0 and each committed round
        line = svg.find(f".//{{http://www.w3.org/2000/svg}}g[@id='accuracy-time-{run_id}']")
        assert line is not None, run_id
        assert len(line.findall(".//{http://www.w3.org/2000/svg}use")) == points
    assert f"{alpha[:8]} alpha" in overlay.text and "wall-clock seconds" in overlay.text
    assert client.get("/compare/plots/accuracy-time.svg").status_code == 404
    assert client.get("/compare", params={"runs": ["ffffffff"]}).status_code == 404
    assert client.get("/compare").status_code == 404


def test_a_client_page_shows_each_round_and_the_rejection_reason(
    memory_app: AppFactory, three_runs: list[str]
) -> None:
    client = memory_app()
    alpha = three_runs[0]
    detail = client.get(f"/api/runs/{alpha}/clients/3333").json()
    assert detail["label"] == "p2"
    assert [(u["round_number"], u["accepted"], u["reason"]) for u in detail["rounds"]] == [
        (1, False, "norm 9 > 3"), (2, True, None)
    ]
    html = client.get(f"/runs/{alpha}/clients/3333").text
    assert "norm 9 &gt; 3" in html and "dropped" in html and "node 3333" in html
    assert client.get(f"/runs/{alpha}/clients/9999").status_code == 404


def test_a_round_page_says_who_was_merged_or_dropped(
    memory_app: AppFactory, three_runs: list[str]
) -> None:
    client = memory_app()
    alpha = three_runs[0]
    api = client.get(f"/api/runs/{alpha}/rounds/1").json()
    verdicts = {u["node_id"]: (u["accepted"], u["reason"]) for u in api["updates"]}
    assert verdicts == {"1111": (True, None), "2222": (True, None), "3333": (False, "norm 9 > 3")}
    html = client.get(f"/runs/{alpha}/rounds/1").text
    assert html.count(">merged<") == 2 and html.count(">dropped<") == 1
    assert client.get(f"/runs/{alpha}/rounds/7").status_code == 404
    assert client.get(f"/runs/{alpha}/rounds/{2**70}").status_code == 404


def test_metrics_downloads(memory_app: AppFactory, three_runs: list[str]) -> None:
    client = memory_app()
    alpha = three_runs[0]
    as_json = client.get(f"/api/runs/{alpha}/metrics.json")
    assert "attachment" in as_json.headers["content-disposition"]
    rows = as_json.json()
    assert [r["round"] for r in rows] == [0, 1, 2]
    assert rows[1]["train-loss"] == 1.0 and rows[2]["central-accuracy"] == pytest.approx(0.7)
    as_csv = client.get(f"/api/runs/{alpha}/metrics.csv")
    table = list(csv.DictReader(io.StringIO(as_csv.text)))
    assert [r["round"] for r in table] == ["0", "1", "2"]
    assert table[1]["num_rejected"] == "1" and float(table[2]["central-loss"]) > 0
    assert client.get(f"/api/runs/{alpha}/metrics.xml").status_code == 404


def test_a_starting_run_shows_no_client_count(
    memory_app: AppFactory, memory_store: sessionmaker[Session]
) -> None:
    with memory_store.begin() as s:
        run_id = factories.create_run(s, name="starting")
        repo.start_round(s, run_id, 1, datetime.now(UTC) - timedelta(seconds=1))
    html = memory_app().get(f"/runs/{run_id}").text
    assert '<span class="stat-value" id="num-clients">–</span>' in html


def test_personal_mode_shows_each_clients_personalized_accuracy(
    memory_app: AppFactory, memory_store: sessionmaker[Session]
) -> None:
    with memory_store.begin() as s:
        run_id = factories.create_run(s, name="personal")
        for number, acc in ((1, 0.5), (2, 0.875)):
            base = factories.round_record(number)
            updates = tuple(
                dataclasses.replace(u, metrics={"personal-acc": acc, "train-loss": 0.3})
                for u in base.updates
            )
            factories.commit_round(s, run_id, dataclasses.replace(base, updates=updates))
    client = memory_app()
    html = client.get(f"/runs/{run_id}/clients/1111").text
    assert '<strong id="personal-accuracy">87.5%</strong>' in html  # the latest round's
    assert "<th class=\"num\">personal-acc</th>" in html
    rounds = client.get(f"/api/runs/{run_id}/clients/1111").json()["rounds"]
    assert [u["metrics"]["personal-acc"] for u in rounds] == [0.5, 0.875]
