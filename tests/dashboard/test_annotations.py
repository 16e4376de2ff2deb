"""Tags and notes: the dashboard's only writes, behind the token, in their own session."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from coordinator.store import make_engine, make_session_factory, upgrade_to_head
from coordinator.store.models import RunRow
from dashboard.app import create_app
from dashboard.deps import get_session, get_writer
from dashboard.settings import DashboardSettings
from tests.dashboard import factories
from tests.dashboard.conftest import BASE_URL, TOKEN

BEARER = {"Authorization": f"Bearer {TOKEN}"}


def _client(store: sessionmaker[Session], token: str | None) -> TestClient:
    app = create_app(DashboardSettings(db_url="sqlite://", token=token))

    def session() -> Iterator[Session]:
        with store() as s:
            yield s

    def writer() -> Iterator[Session]:
        with store.begin() as s:
            yield s

    app.dependency_overrides[get_session] = session
    app.dependency_overrides[get_writer] = writer
    return TestClient(app, base_url=BASE_URL)


@pytest.fixture
def run_id(memory_store: sessionmaker[Session]) -> str:
    with memory_store.begin() as s:
        return factories.create_run(s, name="tagged")


def _stored(store: sessionmaker[Session], run_id: str) -> tuple[list[str], str]:
    with store() as s:
        run = s.get(RunRow, run_id)
        assert run is not None
        return list(run.tags), run.notes


def test_tags_and_notes_are_written_with_the_token(
    memory_store: sessionmaker[Session], run_id: str
) -> None:
    client = _client(memory_store, TOKEN)
    body = {"tags": [" baseline ", "adam", "baseline", ""], "notes": "lr too high?"}
    response = client.put(f"/api/runs/{run_id[:8]}/annotations", json=body, headers=BEARER)
    assert response.status_code == 200
    assert response.json()["tags"] == ["baseline", "adam"]  # stripped, once each, in order
    assert _stored(memory_store, run_id) == (["baseline", "adam"], "lr too high?")
    listed = client.get("/api/runs", params={"q": "baseline"}, headers=BEARER).json()
    assert [r["id"] for r in listed["data"]] == [run_id]
    page = client.get(f"/runs/{run_id}", headers=BEARER).text
    assert 'id="annotations-form"' in page and "lr too high?" in page


def test_without_the_token_nothing_is_written(
    memory_store: sessionmaker[Session], run_id: str
) -> None:
    client = _client(memory_store, TOKEN)
    body = {"tags": ["x"], "notes": "y"}
    assert client.put(f"/api/runs/{run_id}/annotations", json=body).status_code == 401
    wrong = {"Authorization": "Bearer not-the-right-token"}
    assert client.put(f"/api/runs/{run_id}/annotations", json=body,
                      headers=wrong).status_code == 401
    assert _stored(memory_store, run_id) == ([], "")


def test_a_dashboard_without_a_token_refuses_writes(
    memory_store: sessionmaker[Session], run_id: str
) -> None:
    client = _client(memory_store, None)
    response = client.put(f"/api/runs/{run_id}/annotations", json={"tags": ["x"]})
    assert response.status_code == 403 and "token" in response.json()["detail"]
    assert _stored(memory_store, run_id) == ([], "")
    assert 'id="annotations-form"' not in client.get(f"/runs/{run_id}").text


@pytest.mark.parametrize("body", [
    {"tags": ["x" * 41]}, {"tags": [str(i) for i in range(21)]}, {"notes": "n" * 10_001},
    {"tags": "not-a-list"}, {"surprise": 1},
])
def test_bad_annotations_are_422_and_change_nothing(
    memory_store: sessionmaker[Session], run_id: str, body: dict[str, object]
) -> None:
    client = _client(memory_store, TOKEN)
    response = client.put(f"/api/runs/{run_id}/annotations", json=body, headers=BEARER)
    assert response.status_code == 422
    assert _stored(memory_store, run_id) == ([], "")


def test_unknown_run_is_404(memory_store: sessionmaker[Session]) -> None:
    client = _client(memory_store, TOKEN)
    response = client.put("/api/runs/ffff/annotations", json={"tags": []}, headers=BEARER)
    assert response.status_code == 404


def test_the_real_writer_engine_writes_the_store(db_url: str) -> None:
    """Without overrides, on SQLite and PostgreSQL: the app's read-only engine reads, its
    own writer writes."""
    engine = make_engine(db_url)
    upgrade_to_head(engine)
    writer = make_session_factory(engine)
    with writer.begin() as s:
        run_id = factories.create_run(s)
    app = create_app(DashboardSettings(db_url=db_url, token=TOKEN))
    try:
        with TestClient(app, base_url=BASE_URL) as client:
            response = client.put(f"/api/runs/{run_id}/annotations",
                                  json={"tags": ["kept"], "notes": "n"}, headers=BEARER)
            assert response.status_code == 200
            read = client.get(f"/api/runs/{run_id}", headers=BEARER).json()
            assert (read["tags"], read["notes"]) == (["kept"], "n")
        assert _stored(writer, run_id) == (["kept"], "n")
    finally:
        engine.dispose()
