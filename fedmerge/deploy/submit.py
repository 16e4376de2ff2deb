"""``fedmerge submit``: start a run on the coordinator and follow it to its end.

Flower 1.42 keeps SuperLink connections ("federations" before) in
``$FLWR_HOME/config.toml``. This does what ``flwr run <app> <connection>`` does (build the
FAB, StartRun through the Control API), in this process, then polls the run's status and
exits non-zero unless the run finished ``completed`` (``flwr run`` exits 0 even for a run
that failed).

Before anything starts it checks what it can here: the app directory has a
pyproject.toml, every ``-c`` key is one of the app's ``[tool.flwr.app.config]`` keys.
It says when another run is active on the coordinator (runs share the workers), and
``queue`` waits for the active runs to end first. Once the run is started it prints
Flower's run id and, when the coordinator's run store is readable here (on the
coordinator machine), the store's run id; every ``fedmerge`` command takes either.
"""

from __future__ import annotations

import os
import time
import tomllib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from fedmerge.deploy.procs import (
    Echo,
    ServiceError,
    port_open,
    split_address,
)

EXIT_COMPLETED, EXIT_FAILED, EXIT_TIMEOUT = 0, 1, 3
ACTIVE_STATUSES = ("pending", "starting", "running")


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


def start_run(client, app: Path, connection: str, run_config: Sequence[str]) -> int:  # noqa: ANN001
    """What ``flwr run <app> <connection>`` does, in this process (a ``flwr`` process costs
    a Python start and flwr's imports, seconds on a loaded machine): build the FAB from
    ``app``, StartRun through ``client`` (a Control API client); returns Flower's run id."""
    import hashlib

    import httpx
    from flwr.cli.build import build_fab_from_disk
    from flwr.cli.config_utils import load_and_validate
    from flwr.cli.flower_config import read_superlink_connection
    from flwr.common.config import parse_config_args
    from flwr.common.serde import fab_to_proto, user_config_to_proto
    from flwr.proto.control_pb2 import StartRunRequest
    from flwr.supercore.fab import Fab

    config, _warnings = load_and_validate(app / "pyproject.toml")
    if config is None:
        raise ServiceError(f"{app / 'pyproject.toml'} is not a valid Flower app: "
                           + "; ".join(_warnings))
    try:
        fab_bytes = build_fab_from_disk(app)
    except Exception as exc:  # noqa: BLE001 - Flower's build errors, said as ours
        raise ServiceError(f"building the Flower app bundle of {app} failed: {exc}") from None
    fab = Fab(hashlib.sha256(fab_bytes).hexdigest(), fab_bytes, {})
    request = StartRunRequest(
        fab=fab_to_proto(fab),
        override_config=user_config_to_proto(parse_config_args(list(run_config))),
        federation=read_superlink_connection(connection).federation or "",
    )
    try:
        res = client.StartRun(request)
    except httpx.HTTPStatusError as exc:
        raise ServiceError(f"the coordinator refused the run (HTTP "
                           f"{exc.response.status_code}): {exc.response.text[:500]}") from None
    if not res.HasField("run_id"):
        raise ServiceError("the coordinator did not start the run")
    return int(res.run_id)


def app_config_keys(app: Path) -> set[str]:
    """The run-config keys the app declares (``[tool.flwr.app.config]``, flattened);
    ServiceError when ``app`` has no pyproject.toml."""
    from flwr.common.config import flatten_dict

    pyproject = app / "pyproject.toml"
    if not pyproject.is_file():
        raise ServiceError(
            f"no pyproject.toml in {app}: run `fedmerge submit` from the fedmerge checkout "
            "(the Flower app it builds and sends), or point at it with --app DIR"
        )
    try:
        data = tomllib.loads(pyproject.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ServiceError(f"{pyproject}: {exc}") from None
    config = data.get("tool", {}).get("flwr", {}).get("app", {}).get("config")
    if not isinstance(config, dict):
        raise ServiceError(f"{pyproject} has no [tool.flwr.app.config]: is {app} a Flower "
                           "app? Point at fedmerge's checkout with --app DIR")
    return set(flatten_dict(config))


def check_run_config(app: Path, run_config: Sequence[str]) -> None:
    """ServiceError naming every ``-c`` key the app does not declare, or a value that
    does not parse, before anything is sent."""
    from flwr.common.config import flatten_dict, parse_config_args

    known = app_config_keys(app)
    for item in run_config:
        try:
            given = parse_config_args([item])
        except ValueError as exc:  # TOMLDecodeError is one
            raise ServiceError(f"--run-config {item!r}: {exc}") from None
        unknown = sorted(set(flatten_dict(given)) - known)
        if unknown:
            raise ServiceError(
                f"--run-config: unknown key(s) {', '.join(unknown)} (not in "
                f"[tool.flwr.app.config] of {app / 'pyproject.toml'}; README lists them)"
            )


class RunWatcher:
    """Reads a run's status through the SuperLink's Control API."""

    def __init__(self, connection: str, flwr_home: Path) -> None:
        from fedmerge.deploy.operator import control_client

        self.client = control_client(connection, flwr_home)

    def status(self, run_id: int) -> RunStatus:
        from flwr.common.serde import run_from_proto
        from flwr.proto.control_pb2 import ListRunsRequest

        res = self.client.ListRuns(ListRunsRequest(run_id=run_id))
        if run_id not in res.run_dict:
            raise ServiceError(f"the SuperLink knows no run {run_id}")
        st = run_from_proto(res.run_dict[run_id]).status
        return RunStatus(st.status, st.sub_status, st.details)

    def active_runs(self) -> dict[int, RunStatus]:
        """Runs that are pending, starting or running."""
        from flwr.common.serde import run_from_proto
        from flwr.proto.control_pb2 import ListRunsRequest

        res = self.client.ListRuns(ListRunsRequest())
        out = {}
        for run_id, proto in res.run_dict.items():
            st = run_from_proto(proto).status
            if st.status in ACTIVE_STATUSES:
                out[int(run_id)] = RunStatus(st.status, st.sub_status, st.details)
        return out

    def close(self) -> None:
        self.client.close()


@dataclass(frozen=True)
class SubmitOptions:
    app: Path
    connection: str
    run_config: tuple[str, ...] = ()
    wait: bool = True
    queue: bool = False  # wait for the active runs to end before starting
    timeout: float | None = None
    poll: float = 1.0
    flwr_home: Path | None = None
    # A callable is asked once the coordinator answers: a coordinator that is still
    # starting writes its token file before it listens, not before `submit` starts.
    operator_token: str | Callable[[], str | None] | None = None
    db_url: str | None = None  # the coordinator's run store, if readable from here
    connect_timeout: float = 60.0  # wait this long for a coordinator that is starting


def submit(opts: SubmitOptions, *, echo: Echo = print) -> int:
    """Start the run; with ``wait``, follow it and return EXIT_COMPLETED, EXIT_FAILED, or
    EXIT_TIMEOUT (the run goes on; ``flwr stop`` ends it)."""
    check_run_config(opts.app, opts.run_config)
    flwr_home = resolve_flwr_home(opts.flwr_home)
    previous = os.environ.get("FLWR_HOME")
    os.environ["FLWR_HOME"] = str(flwr_home)  # where Flower's CLI code reads connections
    try:
        address = _address(opts.connection)
        _wait_for_coordinator(address, opts.connect_timeout, echo)
        token = opts.operator_token
        if callable(token):
            token = token()
        if token:
            from fedmerge.deploy.operator import store_for_flwr_cli

            store_for_flwr_cli(flwr_home, address, token)
        watcher = RunWatcher(opts.connection, flwr_home)
        try:
            _wait_for_turn(watcher, opts, echo)
            run_id = start_run(watcher.client, opts.app, opts.connection, opts.run_config)
            echo(f"started run {run_id} on {opts.connection} (Flower's run id)")
            store_id = _store_run_id(opts.db_url, run_id, wait_s=0 if opts.wait else 20)
            if store_id is None and not opts.wait:
                echo(f"the store's run id: `fedmerge show {run_id}` on the coordinator")
            if not opts.wait:
                return EXIT_COMPLETED
            return _follow(watcher, run_id, opts, echo=echo, store_id=store_id)
        finally:
            watcher.close()
    finally:
        if previous is None:
            os.environ.pop("FLWR_HOME", None)
        else:
            os.environ["FLWR_HOME"] = previous


def _address(connection: str) -> str:
    from flwr.cli.flower_config import read_superlink_connection

    try:
        address = read_superlink_connection(connection).address
    except Exception as exc:  # noqa: BLE001 - click's exception: say it as ours
        raise ServiceError(f"connection {connection!r}: {exc} (pass --superlink HOST:PORT "
                           "with --root-cert or --insecure to write it)") from None
    if not address:
        raise ServiceError(f"connection {connection!r} has no address")
    return str(address)


def _wait_for_coordinator(address: str, timeout: float, echo: Echo) -> None:
    """Return once ``address`` accepts connections; ServiceError after ``timeout``."""
    host, port = split_address(address)
    deadline = time.monotonic() + timeout
    said = False
    while not port_open(host, port):
        if time.monotonic() > deadline:
            raise ServiceError(f"the coordinator at {address} does not answer (waited "
                               f"{timeout:.0f} s): is `fedmerge coordinator` running there?")
        if not said:
            echo(f"waiting for the coordinator at {address} ...")
            said = True
        time.sleep(0.5)


def _wait_for_turn(watcher: RunWatcher, opts: SubmitOptions, echo: Echo) -> None:
    """Say which runs are active; with ``queue``, wait until none is."""
    said = False
    while active := watcher.active_runs():
        listed = ", ".join(f"{rid} ({st.status})" for rid, st in sorted(active.items()))
        if not opts.queue:
            echo(f"note: another run is active on the coordinator: {listed}. Runs share the "
                 "workers and slow each other down; --queue waits for them to end")
            return
        if not said:
            echo(f"queued: waiting for {listed} to end")
            said = True
        time.sleep(opts.poll)
    if said:
        echo("the coordinator is free: starting")


def _store_run_id(db_url: str | None, flower_run_id: int, *, wait_s: float) -> str | None:
    """The store's id of the run Flower calls ``flower_run_id``, if the store is readable
    here and the ServerApp has recorded the run within ``wait_s``."""
    if not db_url or not _store_exists(db_url):
        return None
    from coordinator.store import make_engine, make_session_factory, repo

    deadline = time.monotonic() + wait_s
    engine = make_engine(db_url)
    try:
        while True:
            try:
                with make_session_factory(engine)() as s:
                    row = repo.get_run(s, str(flower_run_id))
                    if row is not None and row.flower_run_id == str(flower_run_id):
                        return row.id
            except Exception:  # noqa: BLE001 - a store not readable from here: say nothing
                return None
            if time.monotonic() >= deadline:
                return None
            time.sleep(0.5)
    finally:
        engine.dispose()


def _store_exists(db_url: str) -> bool:
    """A SQLite store that is not there is not created by looking."""
    from sqlalchemy.engine import make_url

    url = make_url(db_url)
    if url.get_backend_name() != "sqlite":
        return True
    return bool(url.database) and Path(url.database).is_file()


def _follow(watcher: RunWatcher, run_id: int, opts: SubmitOptions, *, echo: Echo,
            store_id: str | None) -> int:
    deadline = None if opts.timeout is None else time.monotonic() + opts.timeout
    last = None
    while True:
        st = watcher.status(run_id)
        if store_id is None and (store_id := _store_run_id(opts.db_url, run_id, wait_s=0)):
            echo(f"store run id {store_id} (`fedmerge show {store_id[:8]}`, or {run_id})")
        if str(st) != last:
            echo(f"run {run_id}: {st}")
            last = str(st)
        if st.finished:
            return EXIT_COMPLETED if st.sub_status == "completed" else EXIT_FAILED
        if deadline is not None and time.monotonic() > deadline:
            echo(f"run {run_id} still {st} after {opts.timeout:.0f} s; not waiting any longer")
            return EXIT_TIMEOUT
        time.sleep(opts.poll)
