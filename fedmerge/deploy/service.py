"""``fedmerge coordinator``: Flower's SuperLink and the dashboard on one machine.

The SuperLink (flwr 1.42) serves its Fleet API (SuperNodes), Control API (``flwr run``,
``fedmerge submit``) and ServerAppIo API on one HTTP port; it starts the ServerApp of each
run in a child process, which writes the run store. The coordinator gives the SuperLink
its own state database and Flower home under the out dir, and the store's URL in
``FEDMERGE_DB_URL`` so the ServerApp writes where the dashboard reads.

TLS (and SuperNode authentication, which Flower only allows over TLS) when certificate
paths are given; plain HTTP only with an explicit ``insecure``. The SuperLink runs through
fedmerge/deploy/superlink.py: the Control API takes only requests that carry the
operator token (``<out-dir>/operator.token``), and off loopback only the Fleet and Control
routes are served.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

from dashboard.server import served_url, start_in_background
from dashboard.settings import is_loopback  # one loopback rule: 127.0.0.0/8, ::1, localhost
from fedmerge.deploy.procs import (
    Echo,
    ServiceError,
    Supervisor,
    child_env,
    run_supervised,
    split_address,
)

DEFAULT_PORT = 8000  # flower-superlink's own default
CLI_CONNECTION = "fedmerge-coordinator"


@dataclass(frozen=True)
class TlsFiles:
    """The SuperLink's certificate chain, as ``fedmerge certs`` writes it."""

    ca: Path
    cert: Path
    key: Path

    @classmethod
    def from_dir(cls, directory: Path) -> TlsFiles:
        from fedmerge.certs import cert_paths  # cryptography: only when TLS is asked for

        paths = cert_paths(Path(directory).expanduser().resolve(), nodes=0)
        return cls(paths.ca_cert, paths.server_cert, paths.server_key)

    def check(self) -> None:
        missing = [str(p) for p in (self.ca, self.cert, self.key) if not p.is_file()]
        if missing:
            raise ServiceError(f"TLS file(s) not found: {', '.join(missing)}")


@dataclass(frozen=True)
class CoordinatorOptions:
    out_dir: Path
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    tls: TlsFiles | None = None
    insecure: bool = False
    supernode_auth: bool = True  # with TLS: only registered SuperNode keys may connect
    register_keys: tuple[Path, ...] = ()  # OpenSSH public keys to register at start
    db: str | None = None
    dashboard: bool = True
    dashboard_host: str = "127.0.0.1"
    dashboard_port: int = 8080
    dashboard_token: str | None = None
    operator_token: str | None = None  # None: keep (or make) <out-dir>/operator.token
    # warm: the SuperLink in process isolation, each run's ServerApp forked from one
    # process that imported torch and the app once (fedmerge/deploy/warm_executor.py);
    # subprocess: Flower's own, a fresh flwr-serverapp process per run
    isolation: str = "warm"

    @property
    def state_dir(self) -> Path:
        return self.out_dir / "superlink"

    @property
    def cli_home(self) -> Path:
        """The Flower home of the coordinator's own Control API calls."""
        return self.state_dir / "cli"

    @property
    def local_address(self) -> str:
        """Where this machine reaches the SuperLink (a wildcard bind is reached on loopback)."""
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::", "") else self.host
        return f"[{host}]:{self.port}" if ":" in host else f"{host}:{self.port}"


def check_options(opts: CoordinatorOptions) -> list[str]:
    """Raise ServiceError for contradictory options; return warnings to show."""
    if opts.tls is None and not opts.insecure:
        raise ServiceError(
            "no TLS certificates given: pass --certs DIR (ca.pem, server.pem, server.key; "
            "`fedmerge certs DIR` makes them) or --insecure for plain HTTP"
        )
    if opts.tls is not None and opts.insecure:
        raise ServiceError("--insecure and TLS certificates exclude each other")
    if opts.tls is not None:
        opts.tls.check()
    if opts.register_keys and (opts.tls is None or not opts.supernode_auth):
        raise ServiceError("--register-key needs TLS with SuperNode authentication on")
    if opts.dashboard and not is_loopback(opts.dashboard_host) and not opts.dashboard_token:
        raise ServiceError(f"--dashboard-host {opts.dashboard_host} needs --dashboard-token "
                           "(or FEDMERGE_DASHBOARD_TOKEN); or --no-dashboard")
    missing = [str(k) for k in opts.register_keys if not k.is_file()]
    if missing:
        raise ServiceError(f"public key file(s) not found: {', '.join(missing)}")
    warnings = []
    if opts.insecure and not is_loopback(opts.host):
        warnings.append(
            f"!!! INSECURE: the SuperLink listens on {opts.host}:{opts.port} WITHOUT TLS and "
            "WITHOUT SuperNode authentication. Anyone who reaches this port can join as a "
            "worker, read the model and start runs. Use --certs on any network you do not "
            "fully control."
        )
    if opts.tls is not None and not opts.supernode_auth:
        warnings.append("SuperNode authentication is off: any SuperNode that trusts the CA "
                        "can join.")
    return warnings


def superlink_argv(opts: CoordinatorOptions) -> list[str]:
    argv = [  # Flower's SuperLink behind the operator token (fedmerge/deploy/superlink.py)
        sys.executable, "-m", "fedmerge.deploy.superlink", "--",
        "--host", opts.host, "--port", str(opts.port),
        "--database", str(opts.state_dir / "state.db"),
        "--disable-runtime-dependency-installation",
    ]
    if opts.isolation == "warm":
        argv += ["--isolation", "process",
                 "--superexec-auth-secret-file", str(opts.state_dir / "superexec.secret")]
    if opts.tls is None:
        return [*argv, "--insecure"]
    argv += ["--ssl-ca-certfile", str(opts.tls.ca), "--ssl-certfile", str(opts.tls.cert),
             "--ssl-keyfile", str(opts.tls.key)]
    return [*argv, "--enable-supernode-auth"] if opts.supernode_auth else argv


def serverapp_executor_argv(opts: CoordinatorOptions) -> list[str]:
    """The warm ServerApp executor: acquires each run's ServerApp task from the SuperLink's
    Runtime API (loopback, the shared secret) and forks it."""
    argv = [sys.executable, "-m", "fedmerge.deploy.warm_executor", "--task-type", "serverapp",
            "--runtime-api-address", opts.local_address, "--parent-pid", str(os.getpid()),
            "--superexec-auth-secret-file", str(opts.state_dir / "superexec.secret")]
    if opts.tls is None:
        return [*argv, "--insecure"]
    return [*argv, "--root-certificates", str(opts.tls.ca)]


def _write_secret(path: Path) -> None:
    """A fresh shared secret for the SuperLink's ServerApp task hand-out (0600)."""
    import secrets

    path.unlink(missing_ok=True)
    path.touch(mode=0o600)
    path.write_bytes(secrets.token_bytes(32))


def _prepare_store(opts: CoordinatorOptions) -> str:
    """The run store's URL, created and migrated now (the dashboard reads it at once)."""
    from coordinator.store import migrated_engine, resolve_db_url

    url = resolve_db_url(opts.db, opts.out_dir)
    with migrated_engine(url):
        pass  # created and migrated: all the service needs before the dashboard reads it
    return url


def write_cli_connection(opts: CoordinatorOptions, token_file: Path) -> None:
    """The coordinator's own Flower CLI connection, ``fedmerge-coordinator`` in
    ``<out-dir>/superlink/cli``, with the operator token: what it registers keys with, and
    what an operator on this machine can use with ``flwr`` (docs/deployment.md)."""
    from fedmerge.deploy.operator import store_for_flwr_cli
    from fedmerge.deploy.submit import write_connection
    from fedmerge.deploy.superlink import read_token

    write_connection(CLI_CONNECTION, address=opts.local_address,
                     root_cert=opts.tls.ca if opts.tls else None, insecure=opts.tls is None,
                     flwr_home=opts.cli_home)
    store_for_flwr_cli(opts.cli_home, opts.local_address, read_token(token_file))


def register_supernode_keys(opts: CoordinatorOptions, token_file: Path, echo: Echo) -> None:
    """Register each public key through the Control API, in this process (a `flwr
    supernode register` process per key took 5-40 s on a loaded machine); a key
    registered before is fine."""
    from flwr.cli.supernode.register import try_load_public_key
    from flwr.proto.control_pb2 import RegisterNodeRequest

    from fedmerge.deploy.operator import token_client
    from fedmerge.deploy.superlink import read_token

    assert opts.tls is not None
    client = token_client(opts.local_address, root_cert=opts.tls.ca,
                          token=read_token(token_file))
    try:
        for key in opts.register_keys:
            try:
                public = try_load_public_key(key)
                res = client.RegisterNode(RegisterNodeRequest(public_key=public))
            except Exception as exc:  # noqa: BLE001 - Flower's errors: said with the key
                if "already in use" in str(exc) or "already" in getattr(
                        getattr(exc, "response", None), "text", ""):
                    echo(f"SuperNode key {key} was registered before")
                    continue
                raise ServiceError(f"registering SuperNode key {key} failed: {exc}") from None
            echo(f"registered SuperNode key {key} (node id {res.node_id})")
    finally:
        client.close()


def _start_dashboard(opts: CoordinatorOptions, db_url: str, echo: Echo) -> object | None:
    """The dashboard beside the SuperLink; the SuperLink does not go down with it."""
    server = start_in_background(db_url, opts.dashboard_host, opts.dashboard_port,
                                 opts.dashboard_token, say=lambda m: echo(f"warning: {m}"))
    if server is not None:
        echo(f"dashboard: {served_url(server)}")
    return server


def run_coordinator(opts: CoordinatorOptions, *, echo: Echo = print,
                    startup_timeout: float = 120.0) -> int:
    """Run until SIGTERM/SIGINT (returns 0) or until the SuperLink dies (returns 1)."""
    from coordinator.home import ENV_HOME
    from fedmerge.deploy.operator import coordinator_token_file
    from fedmerge.deploy.superlink import ENV_TOKEN_FILE

    for warning in check_options(opts):
        echo(warning)
    for private in (opts.out_dir, opts.state_dir):
        private.mkdir(parents=True, exist_ok=True)
        os.chmod(private, 0o700)
    token_file = coordinator_token_file(opts.out_dir, opts.operator_token)
    db_url = _prepare_store(opts)
    env = child_env({
        "FEDMERGE_DB_URL": db_url,  # the ServerApp's store unless a run sets `db`
        ENV_HOME: str(opts.out_dir),  # a run's default out-dir (checkpoints)
        "FLWR_HOME": str(opts.state_dir / "flwr-home"),  # FABs the ServerApps run from
        ENV_TOKEN_FILE: str(token_file),
    })
    supervisor = Supervisor(opts.out_dir / "logs")
    dashboard: list[object] = []  # the uvicorn server, once started

    def start() -> None:
        if opts.isolation == "warm":
            _write_secret(opts.state_dir / "superexec.secret")
        superlink = supervisor.start("superlink", superlink_argv(opts), env=env,
                                     cwd=opts.state_dir)
        host, port = split_address(opts.local_address)
        supervisor.wait_port(superlink, host, port, timeout=startup_timeout)
        if opts.isolation == "warm":
            executor = supervisor.start("serverapp-executor", serverapp_executor_argv(opts),
                                        env=env, cwd=opts.state_dir)
            echo(f"ServerApp executor (warm), pid {executor.pid}, log {executor.log_path}")
        scheme = "TLS" if opts.tls else "plain HTTP"
        echo(f"SuperLink ({scheme}) on {opts.host}:{opts.port}, pid {superlink.pid}, "
             f"log {superlink.log_path}")
        echo(f"operator token (needed by `fedmerge submit` and `flwr` commands): {token_file}")
        write_cli_connection(opts, token_file)
        if opts.register_keys:
            register_supernode_keys(opts, token_file, echo)
        if opts.dashboard and (server := _start_dashboard(opts, db_url, echo)) is not None:
            dashboard.append(server)
        echo(f"run store: {db_url}")

    def stop_dashboard() -> None:
        for server in dashboard:
            server.should_exit = True  # type: ignore[attr-defined]

    return run_supervised(supervisor, start, echo=echo, on_stop=stop_dashboard)
