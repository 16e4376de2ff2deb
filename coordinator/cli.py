"""The ``fedmerge`` command: parses arguments and calls into the rest."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated, NoReturn

import typer

from coordinator.deploy.supernode import DEFAULT_POLL_S

app = typer.Typer(
    help="fedmerge: federated parameter merging on Flower 1.42.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)

OutDir = Annotated[
    Path, typer.Option("--out-dir", help="Where the database and checkpoints go.")
]
Db = Annotated[
    str,
    typer.Option("--db", envvar="FEDMERGE_DB_URL",
                 help="SQLAlchemy URL; default sqlite:///<out-dir>/fedmerge.db."),
]
DEFAULT_OUT = Path("./fedmerge-out")


@app.command()
def demo(
    clients: Annotated[int, typer.Option(help="Simulated clients (SuperNodes).")] = 10,
    rounds: Annotated[int, typer.Option(help="Server rounds.")] = 10,
    mode: Annotated[str, typer.Option(help="global | personal")] = "global",
    optimizer: Annotated[str, typer.Option(help="sgd | momentum | adagrad | adam | yogi")] = "adam",
    server_lr: Annotated[float, typer.Option(help="Server step size.")] = 0.05,
    combiner: Annotated[
        str, typer.Option(help="mean | fisher | median | trimmed-mean | krum | multi-krum")
    ] = "mean",
    partition: Annotated[str, typer.Option(help="iid | dirichlet | pathological")] = "dirichlet",
    alpha: Annotated[float, typer.Option(help="Dirichlet concentration.")] = 0.5,
    model: Annotated[str, typer.Option(help="mlp | cnn")] = "mlp",
    seed: Annotated[int, typer.Option(help="Seed of partitions, init and local SGD.")] = 0,
    dp: Annotated[str, typer.Option(help="off | central (user-level DP, docs/privacy.md)")] = "off",
    out_dir: OutDir = DEFAULT_OUT,
    db: Db = "",
    dashboard: Annotated[bool, typer.Option(help="Serve the dashboard while it runs.")] = True,
    port: Annotated[int, typer.Option(help="Dashboard port (127.0.0.1).")] = 8080,
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="Any other run-config key, as key=value (repeatable)."),
    ] = None,
) -> None:
    """Run a simulated federation on scikit-learn's digits with Flower's simulation engine
    (Ray on 127.0.0.1), merging by gradient steps on the global objective."""
    from coordinator.demo import run_demo

    overrides = {
        "num-clients": clients, "num-server-rounds": rounds, "mode": mode,
        "optimizer": optimizer, "server-lr": server_lr, "combiner": combiner,
        "partition": partition, "dirichlet-alpha": alpha, "model": model, "seed": seed,
        "out-dir": str(out_dir.expanduser().resolve()), "db": db, "min-nodes": clients,
    }
    if dp != "off":  # the demo's clip and noise, unless --set says otherwise
        from coordinator.privacy import DEMO_SETTINGS

        overrides.update({"dp": dp, **DEMO_SETTINGS})
    overrides.update(_pairs(set_ or []))
    raise typer.Exit(run_demo(overrides, dashboard_port=port if dashboard else None))


@app.command()
def resume(
    run: Annotated[str, typer.Argument(help="Run id (or unique prefix), or 'latest'.")] = "latest",
    rounds: Annotated[int | None, typer.Option(help="New total of rounds.")] = None,
    out_dir: OutDir = DEFAULT_OUT,
    db: Db = "",
) -> None:
    """Resume a killed or failed simulated run from its last committed round."""
    from coordinator.demo import run_demo

    overrides: dict[str, object] = {
        "resume-run": run, "out-dir": str(out_dir.expanduser().resolve()), "db": db,
    }
    if rounds is not None:
        overrides["num-server-rounds"] = rounds
    raise typer.Exit(run_demo(overrides, dashboard_port=None))


@app.command()
def runs(out_dir: OutDir = DEFAULT_OUT, db: Db = "") -> None:
    """List the runs in the store."""
    from coordinator.reports import print_runs

    print_runs(db or None, out_dir)


@app.command()
def show(
    run: Annotated[str, typer.Argument(help="Run id or unique prefix.")],
    out_dir: OutDir = DEFAULT_OUT,
    db: Db = "",
) -> None:
    """Show a run's rounds."""
    from coordinator.reports import print_run

    print_run(db or None, out_dir, run)


@app.command()
def export(
    run: Annotated[str, typer.Argument(help="Run id or unique prefix.")],
    dest: Annotated[Path, typer.Option("--to", help="Directory to write into.")] = Path("."),
    out_dir: OutDir = DEFAULT_OUT,
    db: Db = "",
) -> None:
    """Write a run's final model (safetensors) and its history (CSV and JSON)."""
    from coordinator.reports import export_run

    for path in export_run(db or None, out_dir, run, dest):
        typer.echo(path)


@app.command()
def dashboard(
    host: Annotated[
        str, typer.Option(help="Interface to bind; non-loopback needs --token.")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port.")] = 8080,
    token: Annotated[
        str | None,
        typer.Option(envvar="FEDMERGE_DASHBOARD_TOKEN", help="Required on every request when set."),
    ] = None,
    out_dir: OutDir = DEFAULT_OUT,
    db: Db = "",
) -> None:
    """Serve the read-only web dashboard over the run store."""
    from coordinator.store import resolve_db_url
    from dashboard.server import serve

    serve(resolve_db_url(db or None, out_dir.expanduser().resolve()), host=host, port=port,
          token=token)


# ---- deployment: the coordinator service, workers, run submission, certificates ----

CoordOut = Annotated[
    Path, typer.Option("--out-dir", help="Run store, checkpoints, SuperLink state, logs.")
]


@app.command()
def coordinator(
    host: Annotated[str, typer.Option(help="SuperLink interface (0.0.0.0: all).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="SuperLink port: Fleet, Control and ServerAppIo "
                                           "APIs (one HTTP port in flwr 1.42).")] = 8000,
    certs: Annotated[Path | None, typer.Option(
        help="Directory with ca.pem, server.pem, server.key (`fedmerge certs`): TLS and "
             "SuperNode authentication.")] = None,
    insecure: Annotated[bool, typer.Option(
        "--insecure", help="Plain HTTP, no SuperNode authentication.")] = False,
    supernode_auth: Annotated[bool, typer.Option(
        help="With TLS: only registered SuperNode keys may join.")] = True,
    register_key: Annotated[list[Path] | None, typer.Option(
        help="SuperNode public key (OpenSSH) to register at start; repeatable.")] = None,
    out_dir: CoordOut = Path("~/.fedmerge"),
    db: Db = "",
    dashboard: Annotated[bool, typer.Option(help="Serve the dashboard too.")] = True,
    dashboard_host: Annotated[str, typer.Option(help="Dashboard interface.")] = "127.0.0.1",
    dashboard_port: Annotated[int, typer.Option(help="Dashboard port.")] = 8080,
    dashboard_token: Annotated[str | None, typer.Option(
        envvar="FEDMERGE_DASHBOARD_TOKEN", help="Needed off loopback.")] = None,
) -> None:
    """Run the coordinator service: Flower's SuperLink and the dashboard, until stopped."""
    from coordinator.deploy.service import CoordinatorOptions, TlsFiles, run_coordinator

    opts = CoordinatorOptions(
        out_dir=out_dir.expanduser().resolve(), host=host, port=port,
        tls=TlsFiles.from_dir(certs) if certs else None, insecure=insecure,
        supernode_auth=supernode_auth,
        register_keys=tuple(k.expanduser().resolve() for k in register_key or []),
        db=db or None, dashboard=dashboard, dashboard_host=dashboard_host,
        dashboard_port=dashboard_port, dashboard_token=dashboard_token,
    )
    _exit_with(lambda: run_coordinator(opts, echo=lambda m: typer.echo(m, err=True)))


@app.command()
def worker(
    coordinator: Annotated[str, typer.Option(
        "--coordinator", help="The SuperLink's HOST:PORT.")],
    data: Annotated[Path | None, typer.Option(
        help="This worker's own data (train.npz/val.npz or CSV; docs/deployment.md).")] = None,
    partition: Annotated[str | None, typer.Option(
        help="I/N: partition I of N of the run's dataset.")] = None,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda | cuda:N")] = "auto",
    train_tensors: Annotated[str, typer.Option(
        help="Train and send only these tensors (names or prefixes, comma-separated).")] = "",
    root_cert: Annotated[Path | None, typer.Option(
        help="CA certificate the SuperLink's TLS certificate is checked against.")] = None,
    auth_key: Annotated[Path | None, typer.Option(
        help="This SuperNode's private key (OpenSSH ECDSA) for authentication.")] = None,
    insecure: Annotated[bool, typer.Option("--insecure", help="Plain HTTP.")] = False,
    isolation: Annotated[str, typer.Option(
        help="warm: one long-running ClientApp process (fast); subprocess: Flower's "
             "default, a process per message.")] = "warm",
    work_dir: Annotated[Path, typer.Option(
        help="Flower home and logs of this worker; one per worker on a machine.")
    ] = Path("~/.fedmerge/worker"),
    node_config: Annotated[list[str] | None, typer.Option(
        help="More node config, key=value (TOML value); repeatable.")] = None,
    poll_interval: Annotated[float, typer.Option(
        help="Seconds the SuperNode waits between asks for work (Flower's own: 3); each ask "
             "is one small call to the coordinator.")] = DEFAULT_POLL_S,
) -> None:
    """Run a worker: a Flower SuperNode that trains on its data, on its GPU if it has one."""
    from coordinator.deploy.procs import ServiceError
    from coordinator.deploy.worker import WorkerOptions, run_worker

    if isolation not in ("warm", "subprocess"):
        raise typer.BadParameter("--isolation: warm or subprocess")
    split = None
    if partition is not None:
        i, sep, n = partition.partition("/")
        if not (sep and i.isdigit() and n.isdigit()):
            raise typer.BadParameter(f"--partition {partition!r}: expected I/N, e.g. 0/4")
        split = (int(i), int(n))
    opts = WorkerOptions(
        superlink=coordinator, work_dir=work_dir.expanduser().resolve(),
        data_dir=data.expanduser().resolve() if data else None, partition=split, device=device,
        train_tensors=train_tensors, root_cert=root_cert, auth_key=auth_key, insecure=insecure,
        isolation=isolation,  # type: ignore[arg-type]
        extra_node_config=tuple(node_config or []), poll_interval=poll_interval,
    )
    try:
        code = run_worker(opts, echo=lambda m: typer.echo(m, err=True))
    except (ServiceError, ValueError) as exc:  # LocalDataError is a ValueError
        typer.echo(f"error: {exc}", err=True)
        code = 2
    raise typer.Exit(code)


@app.command()
def submit(
    run_config: Annotated[list[str] | None, typer.Option(
        "--run-config", "-c", help="Run-config overrides 'k=v k2=v2' (TOML values).")] = None,
    connection: Annotated[str, typer.Option(
        help="SuperLink connection in $FLWR_HOME/config.toml.")] = "fedmerge",
    superlink: Annotated[str | None, typer.Option(
        help="HOST:PORT: (re)write the connection first.")] = None,
    root_cert: Annotated[Path | None, typer.Option(help="CA certificate (TLS).")] = None,
    insecure: Annotated[bool, typer.Option("--insecure", help="Plain HTTP.")] = False,
    app_dir: Annotated[Path, typer.Option("--app", help="The Flower app (pyproject.toml).")
                       ] = Path("."),
    wait: Annotated[bool, typer.Option(help="Follow the run to its end.")] = True,
    timeout: Annotated[float | None, typer.Option(help="Stop waiting after S seconds.")] = None,
) -> None:
    """Start a run on the coordinator; exit 0 only if it completed (1 failed, 3 timeout)."""
    from coordinator.deploy.submit import submit as submit_run
    from coordinator.deploy.submit import write_connection

    def start() -> int:
        if superlink is not None:
            write_connection(connection, address=superlink,
                             root_cert=root_cert.expanduser().resolve() if root_cert else None,
                             insecure=insecure)
        return submit_run(app_dir, connection, run_config or [], wait=wait, timeout=timeout,
                          echo=typer.echo)

    _exit_with(start)


@app.command()
def certs(
    directory: Annotated[Path, typer.Argument(help="Where to write them.")],
    host: Annotated[list[str] | None, typer.Option(
        help="Name or IP the SuperLink is reached at (besides loopback); repeatable.")] = None,
    nodes: Annotated[int, typer.Option(help="SuperNode key pairs to make.")] = 2,
    days: Annotated[int, typer.Option(help="Validity.")] = 365,
    force: Annotated[bool, typer.Option(help="Overwrite existing files.")] = False,
) -> None:
    """Make a CA, the SuperLink's TLS certificate and SuperNode key pairs."""
    from coordinator.certs import CertsExist, make_certs

    try:
        paths = make_certs(directory.expanduser().resolve(), hosts=host or [], nodes=nodes,
                           days=days, force=force)
    except CertsExist as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    typer.echo(f"CA {paths.ca_cert}\nSuperLink {paths.server_cert} (key {paths.server_key})")
    for private, public in paths.node_keys:
        typer.echo(f"SuperNode key {private} (register {public})")


def _exit_with(service: Callable[[], int]) -> NoReturn:
    """Run a deployment service and exit with its code; a ServiceError is said, exit 2."""
    from coordinator.deploy.procs import ServiceError

    try:
        code = service()
    except ServiceError as exc:
        typer.echo(f"error: {exc}", err=True)
        code = 2
    raise typer.Exit(code)


def _pairs(items: list[str]) -> dict[str, object]:
    import tomllib

    out: dict[str, object] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep:
            raise typer.BadParameter(f"--set {item!r}: expected key=value")
        try:
            out[key.strip()] = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            out[key.strip()] = raw  # a bare string
    return out


def main() -> None:
    app()


if __name__ == "__main__":
    main()
