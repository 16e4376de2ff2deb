"""The demo's dashboard: never another process's page, the URL it prints is the one served."""

from __future__ import annotations

import json
import socket
import time
import urllib.request
from pathlib import Path

import pytest
from sqlalchemy.orm import Session, sessionmaker

from coordinator.store import make_engine, make_session_factory, upgrade_to_head
from dashboard.server import serve_in_thread, served_url
from fedmerge.demo import _start_dashboard, hold_dashboard
from tests.dashboard import factories


def _names(url: str) -> list[str]:
    with urllib.request.urlopen(f"{url}api/runs", timeout=10) as response:
        return [r["name"] for r in json.loads(response.read())["data"]]


def _store(file: Path, name: str) -> str:
    url = f"sqlite:///{file}"
    engine = make_engine(url)
    upgrade_to_head(engine)
    with make_session_factory(engine).begin() as s:
        factories.create_run(s, name=name)
    engine.dispose()
    return url


def test_a_taken_port_moves_the_demo_dashboard_and_says_where(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    other = serve_in_thread(_store(tmp_path / "other.db", "someone-elses-run"), "127.0.0.1", 0)
    taken = other.config.port
    mine = None
    try:
        mine = _start_dashboard(_store(tmp_path / "mine.db", "this-demos-run"), taken)
        assert mine is not None and mine.config.port != taken
        url = served_url(mine)
        assert _names(url) == ["this-demos-run"]  # the URL served is the demo's own
        assert _names(f"http://127.0.0.1:{taken}/") == ["someone-elses-run"]  # untouched
        out = capsys.readouterr().out
        assert f"port {taken} is taken" in out and str(mine.config.port) in out
    finally:
        other.should_exit = True
        if mine is not None:
            mine.should_exit = True


def test_a_free_port_is_used_as_asked(
    file_store: tuple[str, sessionmaker[Session]]
) -> None:
    url, _ = file_store
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = _start_dashboard(url, port)
    try:
        assert server is not None and served_url(server) == f"http://127.0.0.1:{port}/"
    finally:
        if server is not None:
            server.should_exit = True


def test_keep_dashboard_holds_it_until_ctrl_c(
    file_store: tuple[str, sessionmaker[Session]], capsys: pytest.CaptureFixture[str]
) -> None:
    url, writer = file_store
    with writer.begin() as s:
        factories.create_run(s, name="kept")
    server = _start_dashboard(url, 0)
    assert server is not None
    served: list[list[str]] = []

    def ctrl_c() -> None:  # the user reads the page, then presses Ctrl-C
        served.append(_names(served_url(server)))
        raise KeyboardInterrupt

    hold_dashboard(server, wait=ctrl_c)
    assert served == [["kept"]]
    assert server.should_exit
    for _ in range(500):
        try:
            socket.create_connection(("127.0.0.1", server.config.port), timeout=0.1).close()
        except OSError:
            break
        time.sleep(0.01)
    else:
        pytest.fail("the dashboard kept serving after Ctrl-C")
    assert "Ctrl-C" in capsys.readouterr().out
