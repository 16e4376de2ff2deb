"""serve_in_thread/serve: a real uvicorn on 127.0.0.1, clear errors for taken ports and
exposed hosts without a token."""

from __future__ import annotations

import json
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.orm import Session, sessionmaker

from coordinator.store import make_engine, make_session_factory, upgrade_to_head
from dashboard.server import serve, serve_in_thread
from dashboard.settings import InsecureBind
from tests.dashboard import factories
from tests.dashboard.conftest import TOKEN


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def store_url(file_store: tuple[str, sessionmaker[Session]]) -> str:
    url, writer = file_store
    with writer.begin() as s:
        factories.create_run(s)
    return url


@pytest.fixture
def port() -> Iterator[int]:
    yield free_port()


def _get(url: str, headers: dict[str, str] | None = None) -> tuple[int, str]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_serve_in_thread_serves_until_told_to_exit(store_url: str, port: int) -> None:
    server = serve_in_thread(store_url, "127.0.0.1", port)
    try:
        status, body = _get(f"http://127.0.0.1:{port}/api/runs")
        assert status == 200 and json.loads(body)["count"] == 1
    finally:
        server.should_exit = True
    for _ in range(500):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
        except OSError:
            break
        time.sleep(0.01)
    else:
        pytest.fail("the server kept accepting after should_exit")


def test_token(store_url: str, port: int) -> None:
    server = serve_in_thread(store_url, "127.0.0.1", port, token=TOKEN)
    try:
        assert _get(f"http://127.0.0.1:{port}/api/runs")[0] == 401
        auth = {"Authorization": f"Bearer {TOKEN}"}
        assert _get(f"http://127.0.0.1:{port}/api/runs", auth)[0] == 200
    finally:
        server.should_exit = True


def test_a_taken_port_is_a_clear_oserror(store_url: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(OSError, match="already in use"):
            serve_in_thread(store_url, "127.0.0.1", port)
        with pytest.raises(OSError, match="already in use"):
            serve(store_url, "127.0.0.1", port)


def test_exposed_host_without_token_is_refused(store_url: str, port: int) -> None:
    with pytest.raises(InsecureBind, match="without a token"):
        serve(store_url, host="0.0.0.0", port=port)
    with pytest.raises(InsecureBind):
        serve_in_thread(store_url, host="0.0.0.0", port=port)


def test_it_may_start_before_the_store_exists(tmp_path: Path, port: int) -> None:
    """``fedmerge demo`` starts the dashboard first: 503 (retrying) until the store appears."""
    url = f"sqlite:///{tmp_path}/later.db"
    server = serve_in_thread(url, "127.0.0.1", port)
    try:
        status, body = _get(f"http://127.0.0.1:{port}/")
        assert status == 503 and "does not exist" in body and 'http-equiv="refresh"' in body
        assert _get(f"http://127.0.0.1:{port}/api/runs")[0] == 503
        engine = make_engine(url)
        upgrade_to_head(engine)
        with make_session_factory(engine).begin() as s:
            factories.create_run(s, name="arrived-later")
        engine.dispose()
        status, body = _get(f"http://127.0.0.1:{port}/")
        assert status == 200 and "arrived-later" in body
    finally:
        server.should_exit = True
