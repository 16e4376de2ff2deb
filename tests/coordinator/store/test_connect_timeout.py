"""A database server that never answers fails the connection after the connect timeout
(5 s unless set), with a message naming the host, instead of hanging."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest

from coordinator.store import StoreError, StoreUnavailable, connect_timeout_s, make_engine, ping


@pytest.fixture
def silent_server() -> Iterator[int]:
    """A TCP port on 127.0.0.1 that completes the handshake (the kernel's backlog) and
    then never says a word: what a hung or firewalled server looks like to a client."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    try:
        yield sock.getsockname()[1]
    finally:
        sock.close()


def _ping_in_thread(url: str, **engine_kw) -> tuple[BaseException | None, float]:
    """Ping ``url``; (what it raised, seconds taken). Gives up waiting after 60 s so that
    a connection that would hang forever fails the test instead of blocking it."""
    outcome: list[BaseException | None] = []

    def attempt() -> None:
        engine = make_engine(url, **engine_kw)
        try:
            ping(engine)
            outcome.append(None)
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            outcome.append(exc)
        finally:
            engine.dispose()

    t0 = time.monotonic()
    worker = threading.Thread(target=attempt, daemon=True)
    worker.start()
    worker.join(60)
    assert outcome, "the connection attempt was still hanging after 60 s"
    return outcome[0], time.monotonic() - t0


def test_unanswered_connection_fails_after_the_timeout_naming_the_host(
    silent_server: int,
) -> None:
    url = f"postgresql+psycopg://fedmerge:secret@127.0.0.1:{silent_server}/runs"
    exc, _ = _ping_in_thread(url, connect_timeout=2)
    assert isinstance(exc, StoreUnavailable), exc
    assert f"127.0.0.1:{silent_server}" in str(exc)
    assert "secret" not in str(exc)


def test_the_environment_sets_the_timeout(
    silent_server: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FEDMERGE_DB_CONNECT_TIMEOUT", "2")
    exc, _ = _ping_in_thread(f"postgresql+psycopg://postgres@127.0.0.1:{silent_server}/x")
    assert isinstance(exc, StoreUnavailable), exc


def test_timeout_values(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FEDMERGE_DB_CONNECT_TIMEOUT", raising=False)
    assert connect_timeout_s() == 5.0
    assert connect_timeout_s(1.5) == 1.5
    monkeypatch.setenv("FEDMERGE_DB_CONNECT_TIMEOUT", "12")
    assert connect_timeout_s() == 12.0
    for bad in ("soon", "0", "-3", "nan"):
        monkeypatch.setenv("FEDMERGE_DB_CONNECT_TIMEOUT", bad)
        with pytest.raises(StoreError, match="FEDMERGE_DB_CONNECT_TIMEOUT"):
            connect_timeout_s()



def test_the_cli_says_it_in_one_line(silent_server: int, monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from fedmerge.cli import app

    monkeypatch.setenv("FEDMERGE_DB_CONNECT_TIMEOUT", "2")
    url = f"postgresql+psycopg://postgres@127.0.0.1:{silent_server}/runs"
    result = CliRunner().invoke(app, ["runs", "--db", url])
    assert result.exit_code == 2, result.output
    assert f"127.0.0.1:{silent_server}" in result.output and "unavailable" in result.output
    assert "Traceback" not in result.output
