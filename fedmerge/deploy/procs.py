"""Child processes of the coordinator and worker services: their environment, start,
readiness and stop."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import IO

from coordinator.environment import QUIET_LOCAL_ENV

# What every Flower process these services start gets: QUIET_LOCAL_ENV, and SuperExec
# polling for new tasks every 0.1 s instead of Flower's 1 s.
DEPLOY_ENV = {
    **QUIET_LOCAL_ENV,
    "FLWR_SUPEREXEC_TASK_POLL_INTERVAL": "0.1",
    "PYTHONUNBUFFERED": "1",
}
# Flower exit codes worth a hint (flwr/supercore/exit/exit_code.py)
EXIT_HINTS = {
    305: "the SuperLink refused this SuperNode: with SuperNode authentication on, register "
         "its public key on the coordinator (`fedmerge coordinator --register-key node.pub`, "
         "or `flwr supernode register node.pub fedmerge-coordinator` on a running one: "
         "docs/deployment.md)",
}
Echo = Callable[[str], None]


class ServiceError(RuntimeError):
    """A service could not start or one of its processes stopped; the message says why."""


class Stopped(Exception):
    """SIGTERM or SIGINT arrived: shut down cleanly."""


def child_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = {**os.environ, **DEPLOY_ENV}
    env.update(extra or {})
    return env


def split_address(address: str) -> tuple[str, int]:
    """``host:port`` or ``[v6]:port`` -> (host, port)."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"address {address!r} is not HOST:PORT")
    return host.strip("[]"), int(port)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


@dataclass
class Child:
    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path | None
    _log: IO[bytes] | None = field(default=None, repr=False)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def tail(self, lines: int = 15) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        text = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])


class Supervisor:
    """Starts named children (in this process group, so a service manager or a kill of
    the group reaches them all), notices when one ends, and stops them all."""

    def __init__(self, log_dir: Path | None = None) -> None:
        self.log_dir = log_dir
        self.children: list[Child] = []

    def start(
        self, name: str, argv: Sequence[str], *, env: Mapping[str, str],
        cwd: Path | None = None,
    ) -> Child:
        log_file = None
        log_path = None
        if self.log_dir is not None:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            log_path = self.log_dir / f"{name}.log"
            log_file = open(log_path, "ab")  # noqa: SIM115 - closed in stop()
        popen = subprocess.Popen(
            list(argv), env=dict(env), cwd=cwd, stdin=subprocess.DEVNULL,
            stdout=log_file, stderr=subprocess.STDOUT if log_file else None,
        )
        child = Child(name, popen, log_path, log_file)
        self.children.append(child)
        return child

    def exited(self) -> Child | None:
        return next((c for c in self.children if c.popen.poll() is not None), None)

    def wait_port(self, child: Child, host: str, port: int, *, timeout: float) -> None:
        """Block until ``host:port`` accepts connections; ServiceError if ``child`` ends
        or ``timeout`` passes first."""
        deadline = time.monotonic() + timeout
        while not port_open(host, port):
            if child.popen.poll() is not None:
                raise ServiceError(
                    f"{child.name} exited with code {child.popen.returncode} before "
                    f"listening on {host}:{port}\n{child.tail()}"
                )
            if time.monotonic() > deadline:
                raise ServiceError(f"{child.name} not listening on {host}:{port} "
                                   f"after {timeout:.0f} s\n{child.tail()}")
            time.sleep(0.1)

    def supervise(self, *, poll: float = 0.5, tick: Callable[[], None] | None = None) -> Child:
        """Block until a child ends (returns it) or a stop signal arrives (``Stopped``);
        ``tick`` is called every ``poll`` seconds meanwhile."""
        while (ended := self.exited()) is None:
            if tick is not None:
                tick()
            time.sleep(poll)
        return ended

    def forget(self, child: Child) -> None:
        """Drop a child that has ended (closing its log), e.g. before starting it again."""
        self.children.remove(child)
        if child._log is not None:
            child._log.close()

    def stop(self, *, grace: float = 10.0) -> None:
        """SIGTERM to every child still running, SIGKILL to those left after ``grace``."""
        for c in self.children:
            if c.popen.poll() is None:
                c.popen.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace
        for c in self.children:
            try:
                c.popen.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                c.popen.kill()
                c.popen.wait()
            if c._log is not None:
                c._log.close()


def raise_on_stop_signals() -> None:
    """Turn SIGTERM (systemd stop) and SIGINT into ``Stopped`` in the main thread."""

    def handler(signum: int, _frame: FrameType | None) -> None:
        raise Stopped(signal.Signals(signum).name)

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def ignore_stop_signals() -> None:
    """While stopping: a second Ctrl-C must not leave children behind."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def flwr_executable(name: str) -> str:
    """A console script of this Python's environment (flower-superlink, flwr, ...)."""
    candidate = Path(sys.executable).with_name(name)
    return str(candidate) if candidate.exists() else name


def flwr_exit_code(child: Child) -> int | None:
    """Flower's own exit code: it exits 1 on every error and logs "Exit Code: 305"."""
    found = re.findall(r"Exit Code: (\d+)", child.tail(40))
    return int(found[-1]) if found else None


def describe_exit(child: Child) -> str:
    """How a child ended, with the tail of its log and a hint for Flower's exit codes."""
    tail = child.tail()
    flwr_code = flwr_exit_code(child)
    hint = EXIT_HINTS.get(flwr_code, "") if flwr_code else ""
    return (f"{child.name} exited with code {child.popen.returncode}"
            + (f": {hint}" if hint else "") + f"\n{tail}")


def run_supervised(
    supervisor: Supervisor, start: Callable[[], None], *, echo: Echo,
    on_stop: Callable[[], None] | None = None,
) -> int:
    """Start the service's children (``start``) and watch them: 0 after SIGTERM/SIGINT, 1
    (saying why) when one of them ends. ``on_stop``, then stopping every child, follow
    either way, with the stop signals ignored meanwhile."""
    raise_on_stop_signals()
    try:
        start()
        echo(describe_exit(supervisor.supervise()))
        return 1
    except Stopped as sig:
        echo(f"{sig}: stopping")
        return 0
    finally:
        ignore_stop_signals()
        if on_stop is not None:
            on_stop()
        supervisor.stop()
