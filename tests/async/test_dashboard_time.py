"""The dashboard's wall-clock view: central accuracy against seconds since the run
started (sync and async runs alike), and "version" where an async run's labels said
"round"."""

from __future__ import annotations

import warnings
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from datetime import timedelta

import pytest
from sqlalchemy.orm import Session, sessionmaker

from coordinator.store import (
    EvaluationRecord,
    RoundRecord,
    make_engine,
    make_session_factory,
    repo,
    upgrade_to_head,
)
from dashboard import queries
from dashboard.app import create_app
from dashboard.deps import get_session
from dashboard.settings import DashboardSettings

with warnings.catch_warnings():  # starlette's own deprecations
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

SVG_NS = "{http://www.w3.org/2000/svg}"
FINISHED_AFTER_S = {1: 10.0, 2: 25.0, 3: 31.5}


@pytest.fixture
def store() -> Iterator[sessionmaker[Session]]:
    engine = make_engine("sqlite://")
    upgrade_to_head(engine)
    try:
        yield make_session_factory(engine)
    finally:
        engine.dispose()


def _run(sessions: sessionmaker[Session], merge: str) -> str:
    with sessions.begin() as s:
        run_id = repo.create_run(s, name=f"digits-{merge}", config={"merge": merge},
                                 mode="global", optimizer="adam", combiner="mean",
                                 num_rounds_planned=3, out_dir="/tmp")
        repo.add_evaluation(s, run_id, 0, EvaluationRecord("central", 2.3, 0.1, 360))
        t0 = repo.get_run(s, run_id).started_at
        for number, after in FINISHED_AFTER_S.items():
            record = RoundRecord(
                number=number, started_at=t0, finished_at=t0 + timedelta(seconds=after),
                send_s=0.1, wait_s=0.1, merge_s=0.1, evaluate_s=0.1, metrics={},
                checkpoint_path=None, checkpoint_sha256=None, updates=(),
                evaluations=(EvaluationRecord("central", 1.0, 0.3 * number, 360),
                             EvaluationRecord("federated", 1.0, 0.2, 300)))
            repo.start_round(s, run_id, number, t0)
            repo.commit_round(s, run_id, record)
    return run_id


def _client(sessions: sessionmaker[Session]) -> TestClient:
    app = create_app(DashboardSettings(db_url="sqlite://"))

    def session() -> Iterator[Session]:
        with sessions() as s:
            yield s

    app.dependency_overrides[get_session] = session
    return TestClient(app, base_url="http://127.0.0.1:8080")


@pytest.mark.parametrize("merge", ["sync", "async"])
def test_central_accuracy_at_each_commits_seconds(store, merge: str) -> None:
    run_id = _run(store, merge)
    with store() as s:
        points = queries.accuracy_over_time(s, run_id)
    assert [(p.round_number, p.seconds, p.accuracy) for p in points] == [
        (0, 0.0, 0.1), *((n, after, pytest.approx(0.3 * n)) for n, after in
                         FINISHED_AFTER_S.items())]

    svg = _client(store).get(f"/runs/{run_id}/plots/accuracy-time.svg")
    assert svg.status_code == 200 and svg.headers["content-type"].startswith("image/svg")
    line = ET.fromstring(svg.text).find(f".//{SVG_NS}g[@id='central-accuracy-time']")
    assert line is not None and len(line.findall(f".//{SVG_NS}use")) == 4
    assert "wall-clock seconds" in svg.text


def test_an_async_run_speaks_of_versions_a_sync_run_of_rounds(store) -> None:
    client = _client(store)
    for merge, unit, heading in (("async", "version", "Model versions"),
                                 ("sync", "round", "Rounds")):
        run_id = _run(store, merge)
        accuracy = client.get(f"/runs/{run_id}/plots/accuracy.svg").text
        durations = client.get(f"/runs/{run_id}/plots/durations.svg").text
        assert f"Accuracy per {unit}" in accuracy and f">{unit}<" in accuracy
        assert f"{unit.capitalize()} duration by phase" in durations
        page = client.get(f"/runs/{run_id}").text
        assert f"<h2>{heading}</h2>" in page and "plots/accuracy-time.svg" in page
