"""dashboard/cache.py: a polled answer is computed once per state of the run store, every
write the coordinator makes shows at the next poll, only 200s are kept, and requests
that arrive together for the same answer share one computation."""

from __future__ import annotations

import asyncio
import time
import warnings
from datetime import UTC, datetime

import httpx
import pytest
from sqlalchemy.orm import Session, sessionmaker

from coordinator.store import make_session_factory, repo
from dashboard import queries
from dashboard.app import create_app
from dashboard.db import make_readonly_engine
from dashboard.settings import DashboardSettings
from tests.dashboard.conftest import BASE_URL
from tests.dashboard.factories import commit_round, create_run, round_record

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient


@pytest.fixture
def counted(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The run ids ``queries.run_detail`` was computed for (the API's run route)."""
    calls: list[str] = []
    real = queries.run_detail

    def run_detail(s: Session, run_id: str):
        calls.append(run_id)
        return real(s, run_id)

    monkeypatch.setattr(queries, "run_detail", run_detail)
    return calls


def _client(url: str, poll_cache_s: float = 0.0) -> TestClient:
    return TestClient(create_app(DashboardSettings(db_url=url, poll_cache_s=poll_cache_s)),
                      base_url=BASE_URL)


def test_an_unchanged_store_is_read_once_and_each_write_shows_at_the_next_poll(
    file_store: tuple[str, sessionmaker[Session]], counted: list[str]
) -> None:
    url, sessions = file_store
    with sessions.begin() as s:
        run_id = create_run(s)
    with _client(url) as client:
        first = [client.get(f"/api/runs/{run_id}") for _ in range(5)]
        assert all(r.status_code == 200 for r in first)
        assert len(counted) == 1 and len({r.text for r in first}) == 1
        # each write the coordinator makes is the next poll's answer
        with sessions.begin() as s:
            repo.start_round(s, run_id, 1, datetime.now(UTC))
        assert client.get(f"/api/runs/{run_id}/rounds").json()["data"][0]["status"] == "running"
        with sessions.begin() as s:
            commit_round(s, run_id, round_record(1))
        assert client.get(f"/api/runs/{run_id}").json()["rounds_done"] == 1
        with sessions.begin() as s:
            repo.finish_run(s, run_id, "completed")
        done = client.get(f"/api/runs/{run_id}").json()
        assert done["status"] == "completed" and len(counted) == 3


def test_answers_may_lag_the_store_by_poll_cache_s_at_most(
    file_store: tuple[str, sessionmaker[Session]], counted: list[str]
) -> None:
    url, sessions = file_store
    with sessions.begin() as s:
        run_id = create_run(s)
    with _client(url, poll_cache_s=0.3) as client:
        assert client.get(f"/api/runs/{run_id}").json()["status"] == "running"
        with sessions.begin() as s:
            repo.finish_run(s, run_id, "completed")
        give_up = time.monotonic() + 10
        while client.get(f"/api/runs/{run_id}").json()["status"] != "completed":
            assert time.monotonic() < give_up, "the write never showed"
            time.sleep(0.05)
    assert len(counted) == 2


def test_only_successful_answers_are_kept(
    file_store: tuple[str, sessionmaker[Session]], counted: list[str]
) -> None:
    url, sessions = file_store
    with _client(url) as client:
        assert client.get("/api/runs/abc123").status_code == 404
        assert client.get("/api/runs/abc123").status_code == 404
        assert len(counted) == 2  # a 404 is computed each time, not kept


def test_requests_that_arrive_together_share_one_computation(
    file_store: tuple[str, sessionmaker[Session]], monkeypatch: pytest.MonkeyPatch
) -> None:
    url, sessions = file_store
    with sessions.begin() as s:
        run_id = create_run(s)
    calls: list[str] = []
    real = queries.run_detail

    def slow(s: Session, rid: str):
        calls.append(rid)
        time.sleep(0.3)  # still computing while the others arrive
        return real(s, rid)

    monkeypatch.setattr(queries, "run_detail", slow)
    app = create_app(DashboardSettings(db_url=url, poll_cache_s=0.0))
    engine = make_readonly_engine(url)
    app.state.session_factory = make_session_factory(engine)  # what the lifespan sets

    async def poll_together() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url=BASE_URL) as client:
            return await asyncio.gather(*(client.get(f"/api/runs/{run_id}") for _ in range(20)))

    try:
        answers = asyncio.run(poll_together())
    finally:
        engine.dispose()
    assert [r.status_code for r in answers] == [200] * 20
    assert len({r.text for r in answers}) == 1
    assert calls == [run_id]


def test_the_dashboards_own_write_shows_at_once(
    file_store: tuple[str, sessionmaker[Session]]
) -> None:
    """Tags and notes are not part of the store's stamp: the PUT itself starts anew."""
    from tests.dashboard.conftest import TOKEN

    url, sessions = file_store
    with sessions.begin() as s:
        run_id = create_run(s)
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    app = create_app(DashboardSettings(db_url=url, token=TOKEN, poll_cache_s=60.0))
    with TestClient(app, base_url=BASE_URL) as client:
        assert client.get(f"/api/runs/{run_id}", headers=bearer).json()["tags"] == []
        put = client.put(f"/api/runs/{run_id}/annotations", headers=bearer,
                         json={"tags": ["baseline"], "notes": "n"})
        assert put.status_code == 200
        assert client.get(f"/api/runs/{run_id}", headers=bearer).json()["tags"] == ["baseline"]
