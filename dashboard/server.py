"""Run the dashboard: ``serve`` blocks (Ctrl-C stops it), ``serve_in_thread`` returns at once.

    serve("sqlite:////abs/fedmerge.db", host="0.0.0.0", port=8080, token="...")
    server = serve_in_thread(db_url, "127.0.0.1", 8080); ...; server.should_exit = True

Both bind the socket themselves first, so a taken port is an OSError that says so, and
both refuse a non-loopback host without a token (``InsecureBind``). A store that does
not exist yet is no error: pages answer 503 (and retry) until the coordinator creates it.
"""

from __future__ import annotations

import errno
import socket
import threading
import time
from collections.abc import Callable

import uvicorn

from dashboard.app import create_app
from dashboard.settings import DashboardSettings, check_exposure

STARTUP_TIMEOUT_S = 30.0


class DashboardStartError(RuntimeError):
    """uvicorn stopped before it accepted connections (its log says why)."""


def _settings(db_url: str, host: str, port: int, token: str | None) -> DashboardSettings:
    """Validated settings (DashboardConfigError names a bad one without echoing it)."""
    check_exposure(host, token)  # the named error, before pydantic wraps it
    return DashboardSettings.checked(db_url=db_url, host=host, port=port, token=token)


def _bound(settings: DashboardSettings, sock: socket.socket) -> DashboardSettings:
    """The settings with the port really bound (port 0 asks the system for a free one)."""
    return settings.model_copy(update={"port": sock.getsockname()[1]})


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on (host, port); OSError with a clear message if it is taken."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host.strip("[]"), port))
        sock.listen(128)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise OSError(
                exc.errno, f"cannot serve the dashboard on {host}:{port}: the port is already "
                "in use (pick another port, or stop what is listening there)"
            ) from exc
        raise OSError(exc.errno, f"cannot serve the dashboard on {host}:{port}: {exc}") from exc
    sock.set_inheritable(True)
    return sock


def _server(settings: DashboardSettings) -> uvicorn.Server:
    config = uvicorn.Config(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        lifespan="on",
        ws="none",  # no websockets here; skips loading (and warnings from) that stack
        log_level="warning",
        access_log=False,
        # No logging.dictConfig: it would shut down the handlers of the process the
        # dashboard runs in (the demo's, the coordinator's), closing their streams.
        log_config=None,
    )
    return uvicorn.Server(config)


def serve(
    db_url: str, host: str = "127.0.0.1", port: int = 8080, token: str | None = None
) -> None:
    """Serve until interrupted."""
    settings = _settings(db_url, host, port, token)
    sock = bind(host, port)
    try:
        _server(_bound(settings, sock)).run(sockets=[sock])
    finally:
        sock.close()


def serve_in_thread(
    db_url: str, host: str = "127.0.0.1", port: int = 8080, token: str | None = None
) -> uvicorn.Server:
    """Start serving in a daemon thread; return once it accepts connections.

    Stop it with ``server.should_exit = True``; ``server.config.port`` is the port served
    (port 0 picks a free one).
    """
    settings = _settings(db_url, host, port, token)
    sock = bind(host, port)
    server = _server(_bound(settings, sock))

    def run() -> None:
        try:
            server.run(sockets=[sock])
        finally:
            sock.close()

    thread = threading.Thread(target=run, name=f"dashboard-{host}:{port}", daemon=True)
    thread.start()
    give_up = time.monotonic() + STARTUP_TIMEOUT_S
    while not server.started:
        if not thread.is_alive() or time.monotonic() > give_up:
            server.should_exit = True
            raise DashboardStartError(f"the dashboard on {host}:{port} did not start")
        time.sleep(0.01)
    return server


def served_url(server: uvicorn.Server) -> str:
    """The address a server from ``serve_in_thread`` really serves (its port may differ
    from the one asked for)."""
    host = server.config.host
    return f"http://{f'[{host}]' if ':' in host else host}:{server.config.port}/"


def start_in_background(
    db_url: str, host: str, port: int, token: str | None = None, *,
    say: Callable[[str], None], any_free_port: bool = False,
) -> uvicorn.Server | None:
    """The dashboard in a background thread, for a process whose own work (a demo run, a
    SuperLink) must go on without it: None, after ``say``-ing why, if it cannot start.
    ``any_free_port``: a taken ``port`` moves it to a free one, and it says so (a page on
    ``port`` would be another process's)."""
    try:
        return serve_in_thread(db_url, host, port, token)
    except OSError as exc:
        if not (any_free_port and exc.errno == errno.EADDRINUSE):
            say(f"dashboard not started: {exc}")
            return None
    except Exception as exc:  # noqa: BLE001 - a bad setting: the caller's work goes on
        say(f"dashboard not started: {exc}")
        return None
    try:
        server = serve_in_thread(db_url, host, 0, token)
    except Exception as exc:  # noqa: BLE001
        say(f"dashboard not started: {exc}")
        return None
    say(f"port {port} is taken by another process (what it serves is not this one's); "
        f"this dashboard is on port {server.config.port}")
    return server
