"""``fedmerge submit``: start a run on the coordinator and follow it to its end.

Flower 1.42 keeps SuperLink connections ("federations" before) in
``$FLWR_HOME/config.toml``; ``flwr run . <connection>`` builds the FAB and starts the run.
``flwr run`` exits 0 even for a run that failed, so this polls the run's status through
the Control API and exits non-zero unless the run finished ``completed``.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from coordinator.deploy.procs import Echo, ServiceError, child_env, flwr_executable

EXIT_COMPLETED, EXIT_FAILED, EXIT_TIMEOUT = 0, 1, 3


def resolve_flwr_home(explicit: Path | None = None) -> Path:
    if explicit is not None:
        return Path(explicit).expanduser()
    return Path(os.environ.get("FLWR_HOME") or Path.home() / ".flwr").expanduser()


def write_connection(
    name: str, *, address: str, root_cert: Path | None = None, insecure: bool = False,
    flwr_home: Path | None = None,
) -> Path:
    """Add or replace ``[superlink.<name>]`` in $FLWR_HOME/config.toml; other entries stay."""
    import tomli_w  # flwr's own dependency

    if (root_cert is None) == (not insecure):
        raise ServiceError("a connection needs --root-cert (TLS) or --insecure")
    path = resolve_flwr_home(flwr_home) / "config.toml"
    config: dict = tomllib.loads(path.read_text()) if path.exists() else {}
    superlink = config.setdefault("superlink", {})
    entry: dict[str, object] = {"address": address}
    if insecure:
        entry["insecure"] = True
    else:
        assert root_cert is not None
        entry["root-certificates"] = str(Path(root_cert).expanduser().resolve())
    superlink[name] = entry
    superlink.setdefault("default", name)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(tomli_w.dumps(config))
    return path


@dataclass(frozen=True)
class RunStatus:
    status: str  # pending | starting | running | finished
    sub_status: str  # completed | failed | stopped (when finished)
    details: str

    @property
    def finished(self) -> bool:
        return self.status == "finished"

    def __str__(self) -> str:
        text = f"{self.status}:{self.sub_status}" if self.sub_status else self.status
        return f"{text} ({self.details})" if self.details else text


def start_run(
    app: Path, connection: str, run_config: Sequence[str], *, env: dict[str, str],
    timeout: float = 300.0,
) -> int:
    """``flwr run <app> <connection> --format json``; returns Flower's run id."""
    argv = [flwr_executable("flwr"), "run", str(app), connection, "--format", "json"]
    for item in run_config:
        argv += ["--run-config", item]
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout)
    start = done.stdout.find("{")
    try:
        payload = json.loads(done.stdout[start:]) if start >= 0 else {}
    except json.JSONDecodeError:
        payload = {}
    if done.returncode != 0 or not payload.get("success") or not payload.get("run-id"):
        raise ServiceError(
            f"flwr run failed (exit {done.returncode}):\n{(done.stdout + done.stderr).strip()}"
        )
    return int(payload["run-id"])


class RunWatcher:
    """Reads a run's status through the SuperLink's Control API."""

    def __init__(self, connection: str) -> None:
        from flwr.cli.flower_config import read_superlink_connection
        from flwr.cli.utils import init_http_client_from_connection

        self._client = init_http_client_from_connection(read_superlink_connection(connection))

    def status(self, run_id: int) -> RunStatus:
        from flwr.common.serde import run_from_proto
        from flwr.proto.control_pb2 import ListRunsRequest

        res = self._client.ListRuns(ListRunsRequest(run_id=run_id))
        if run_id not in res.run_dict:
            raise ServiceError(f"the SuperLink knows no run {run_id}")
        st = run_from_proto(res.run_dict[run_id]).status
        return RunStatus(st.status, st.sub_status, st.details)

    def close(self) -> None:
        self._client.close()


def submit(
    app: Path, connection: str, run_config: Sequence[str], *, wait: bool = True,
    timeout: float | None = None, poll: float = 1.0, flwr_home_dir: Path | None = None,
    echo: Echo = print,
) -> int:
    """Start the run; with ``wait``, follow it and return EXIT_COMPLETED, EXIT_FAILED, or
    EXIT_TIMEOUT (the run goes on; ``flwr stop`` ends it)."""
    env = child_env({"FLWR_HOME": str(resolve_flwr_home(flwr_home_dir))})
    previous = os.environ.get("FLWR_HOME")
    os.environ["FLWR_HOME"] = env["FLWR_HOME"]  # for the in-process Control API client
    try:
        run_id = start_run(app, connection, run_config, env=env)
        echo(f"started run {run_id} on {connection}")
        if not wait:
            return EXIT_COMPLETED
        watcher = RunWatcher(connection)
        try:
            return _follow(watcher, run_id, timeout=timeout, poll=poll, echo=echo)
        finally:
            watcher.close()
    finally:
        if previous is None:
            os.environ.pop("FLWR_HOME", None)
        else:
            os.environ["FLWR_HOME"] = previous


def _follow(watcher: RunWatcher, run_id: int, *, timeout: float | None, poll: float,
            echo: Echo) -> int:
    deadline = None if timeout is None else time.monotonic() + timeout
    last = None
    while True:
        st = watcher.status(run_id)
        if str(st) != last:
            echo(f"run {run_id}: {st}")
            last = str(st)
        if st.finished:
            return EXIT_COMPLETED if st.sub_status == "completed" else EXIT_FAILED
        if deadline is not None and time.monotonic() > deadline:
            echo(f"run {run_id} still {st} after {timeout:.0f} s; not waiting any longer")
            return EXIT_TIMEOUT
        time.sleep(poll)
