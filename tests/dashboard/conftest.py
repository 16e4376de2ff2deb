"""Dashboard fixtures.

``real_run``: one real simulated federation (Flower's simulation engine, real digits),
run once per test session; the API, page and browser tests read its database.
``memory_app``: the app over an in-memory SQLite store, via ``dependency_overrides``.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy.orm import Session, sessionmaker

from coordinator.store import make_engine, make_session_factory, upgrade_to_head
from dashboard.app import create_app
from dashboard.deps import get_session
from dashboard.settings import DashboardSettings

with warnings.catch_warnings():  # starlette's own deprecations (httpx2, anyio aliases)
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

TOKEN = "s3cret-dashboard-token"
# The Host the default settings (127.0.0.1:8080) answer; TestClient's own "testserver"
# is refused by the DNS-rebinding guard.
BASE_URL = "http://127.0.0.1:8080"


@dataclass(frozen=True)
class RealRun:
    run_id: str
    db_url: str


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "real_run" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.simulation)


@pytest.fixture(scope="session")
def real_run(tmp_path_factory: pytest.TempPathFactory) -> RealRun:
    from coordinator.config import parse_run_config
    from coordinator.simulation import simulate

    out = tmp_path_factory.mktemp("real-run")
    cfg = parse_run_config({
        "num-server-rounds": 3, "out-dir": str(out), "num-clients": 3, "min-nodes": 3,
        "optimizer": "adam", "server-lr": 0.05, "run-name": "digits-adam-3",
    })
    result = simulate(cfg, num_clients=3)
    return RealRun(run_id=result.run_id, db_url=result.db_url)


@pytest.fixture(scope="session")
def real_client(real_run: RealRun) -> Iterator[TestClient]:
    app = create_app(DashboardSettings(db_url=real_run.db_url))
    # runs the lifespan: the app's own read-only engine
    with TestClient(app, base_url=BASE_URL) as client:
        yield client


@pytest.fixture
def real_session(real_run: RealRun) -> Iterator[Session]:
    """The test's own view of the real run's database, to count rows with."""
    engine = make_engine(real_run.db_url)
    try:
        with make_session_factory(engine)() as session:
            yield session
    finally:
        engine.dispose()


@pytest.fixture
def memory_store() -> Iterator[sessionmaker[Session]]:
    engine = make_engine("sqlite://")
    upgrade_to_head(engine)
    try:
        yield make_session_factory(engine)
    finally:
        engine.dispose()


AppFactory = Callable[..., TestClient]


@pytest.fixture
def memory_app(memory_store: sessionmaker[Session]) -> AppFactory:
    """``memory_app(token=None)``: a TestClient over the in-memory store."""

    def make(token: str | None = None) -> TestClient:
        app = create_app(DashboardSettings(db_url="sqlite://", token=token))

        def session() -> Iterator[Session]:
            with memory_store() as s:
                yield s

        app.dependency_overrides[get_session] = session
        return TestClient(app, base_url=BASE_URL)  # no lifespan: the override is the only store

    return make


@pytest.fixture
def file_store(tmp_path: Path) -> Iterator[tuple[str, sessionmaker[Session]]]:
    """A fresh SQLite file store (WAL), as the coordinator makes it, and its writer sessions."""
    url = f"sqlite:///{tmp_path / 'fedmerge.db'}"
    engine = make_engine(url)
    upgrade_to_head(engine)
    try:
        yield url, make_session_factory(engine)
    finally:
        engine.dispose()
