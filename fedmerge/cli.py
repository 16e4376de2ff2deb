"""The ``fedmerge`` command: parses arguments and calls into the rest."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, NoReturn

import typer

from fedmerge.deploy.supernode import DEFAULT_IDLE_POLL_S, DEFAULT_POLL_S

app = typer.Typer(
    help="fedmerge: federated parameter merging on Flower 1.42.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)

OutDir = Annotated[
    Path | None,
    typer.Option("--out-dir", help="Where the database and checkpoints are; default "
                 "$FEDMERGE_HOME, else ~/.fedmerge (the coordinator's default too)."),
]
Db = Annotated[
    str,
    typer.Option("--db", envvar="FEDMERGE_DB_URL",
                 help="SQLAlchemy URL; default sqlite:///<out-dir>/fedmerge.db."),
]


@app.command()
def demo(
    clients: Annotated[int, typer.Option(help="Simulated clients (SuperNodes).")] = 10,
    rounds: Annotated[int, typer.Option(help="Server rounds.")] = 10,
    mode: Annotated[str, typer.Option(help="global | personal")] = "global",
    task: Annotated[str, typer.Option(
        help="digits | causal-lm (LoRA on a tiny local language model, docs/lora.md)")
    ] = "digits",
    optimizer: Annotated[str | None, typer.Option(
        help="sgd | momentum | adagrad | adam | yogi  [default: adam; causal-lm: sgd]")] = None,
    server_lr: Annotated[float | None, typer.Option(
        help="Server step size.  [default: 0.05; causal-lm: 1.0]")] = None,
    combiner: Annotated[
        str, typer.Option(help="mean | fisher | median | trimmed-mean | krum | multi-krum | "
                          "bucketed-median | bucketed-trimmed-mean | bucketed-krum | "
                          "bucketed-multi-krum | centered-clipping | fltrust. For unknown, "
                          "non-IID clients: mean with --set max-norm-ratio=3 --set "
                          "norm-ratio-byzantine=3 (no accuracy lost when nobody attacks; "
                          "stops scaled, noisy and NaN offsets, not attacks within the "
                          "honest spread; it holds every offset of a round; the others "
                          "cost 8-70 points when nobody attacks; docs/robustness.md)")
    ] = "mean",
    partition: Annotated[str, typer.Option(help="iid | dirichlet | pathological")] = "dirichlet",
    alpha: Annotated[float, typer.Option(help="Dirichlet concentration.")] = 0.5,
    model: Annotated[str, typer.Option(help="mlp | cnn")] = "mlp",
    seed: Annotated[int, typer.Option(help="Seed of partitions, init and local SGD.")] = 0,
    dp: Annotated[str, typer.Option(help="off | central (user-level DP, docs/privacy.md)")] = "off",
    out_dir: OutDir = None,
    db: Db = "",
    dashboard: Annotated[bool, typer.Option(help="Serve the dashboard while it runs.")] = True,
    port: Annotated[int, typer.Option(
        help="Dashboard port (127.0.0.1); a free one is used if it is taken.")] = 8080,
    keep_dashboard: Annotated[bool, typer.Option(
        help="Keep the dashboard up after the run ends, until Ctrl-C.")] = False,
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="Any other run-config key, as key=value (repeatable)."),
    ] = None,
) -> None:
    """Run a simulated federation on scikit-learn's digits (or, with --task causal-lm,
    LoRA fine-tuning of a tiny language model on Shakespeare roles) with Flower's
    simulation engine (Ray on 127.0.0.1), merging by gradient steps on the global
    objective."""
    from fedmerge.demo import CAUSAL_LM_DEMO, run_demo

    lm = task == "causal-lm"
    overrides = {
        "num-clients": clients, "num-server-rounds": rounds, "mode": mode,
        "optimizer": optimizer or ("sgd" if lm else "adam"),
        "server-lr": server_lr if server_lr is not None else (1.0 if lm else 0.05),
        "combiner": combiner,
        "partition": partition, "dirichlet-alpha": alpha, "seed": seed,
        **({"task-config": json.dumps({"model": model})} if model != "mlp" else {}),
        "out-dir": str(_out(out_dir)), "db": db,
    }
    if lm:  # the task, and local training that suits LoRA, unless --set says otherwise
        overrides.update(CAUSAL_LM_DEMO)
    elif task != "digits":
        raise typer.BadParameter(f"--task {task!r}: digits or causal-lm")
    if dp != "off":  # the demo's clip and noise, unless --set says otherwise
        from coordinator.privacy import DEMO_SETTINGS

        overrides.update({"dp": dp, **DEMO_SETTINGS})
    overrides.update(_pairs(set_ or []))
    overrides.setdefault("min-nodes", demo_min_nodes(clients, overrides.get("fraction-train")))
    raise typer.Exit(run_demo(overrides, dashboard_port=port if dashboard else None,
                              keep_dashboard=keep_dashboard))


@app.command()
def resume(
    run: Annotated[str, typer.Argument(help="Run id (or unique prefix), or 'latest'.")] = "latest",
    rounds: Annotated[int | None, typer.Option(help="New total of rounds.")] = None,
    out_dir: OutDir = None,
    db: Db = "",
) -> None:
    """Resume a killed or failed simulated run from its last committed round."""
    from fedmerge.demo import run_demo

    overrides: dict[str, object] = {
        "resume-run": run, "out-dir": str(_out(out_dir)), "db": db,
    }
    if rounds is not None:
        overrides["num-server-rounds"] = rounds
    raise typer.Exit(run_demo(overrides, dashboard_port=None))


@app.command()
def runs(out_dir: OutDir = None, db: Db = "") -> None:
    """List the runs in the store."""
    from fedmerge.reports import print_runs

    print_runs(db or None, _out(out_dir))


@app.command()
def show(
    run: Annotated[str, typer.Argument(
        help="Run id or unique prefix, Flower's run id, or 'latest'.")],
    out_dir: OutDir = None,
    db: Db = "",
) -> None:
    """Show a run's rounds."""
    from fedmerge.reports import print_run

    print_run(db or None, _out(out_dir), run)


@app.command()
def export(
    run: Annotated[str, typer.Argument(
        help="Run id or unique prefix, Flower's run id, or 'latest'.")],
    dest: Annotated[Path, typer.Option("--to", help="Directory to write into.")] = Path("."),
    out_dir: OutDir = None,
    db: Db = "",
) -> None:
    """Write a run's final model (safetensors) and its history (CSV and JSON)."""
    from fedmerge.reports import export_run

    for path in export_run(db or None, _out(out_dir), run, dest):
        typer.echo(path)


@app.command()
def dashboard(
    host: Annotated[
        str, typer.Option(help="Interface to bind; non-loopback needs --token.")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port.")] = 8080,
    token: Annotated[
        str | None,
        typer.Option(envvar="FEDMERGE_DASHBOARD_TOKEN", help="Required on every request when "
                     "set; prefer $FEDMERGE_DASHBOARD_TOKEN (argv shows in `ps`)."),
    ] = None,
    out_dir: OutDir = None,
    db: Db = "",
) -> None:
    """Serve the read-only web dashboard over the run store."""
    from coordinator.store import resolve_db_url
    from dashboard.server import serve
    from dashboard.settings import DashboardConfigError, InsecureBind

    try:
        serve(resolve_db_url(db or None, _out(out_dir)), host=host,
              port=port, token=token)
    except (DashboardConfigError, InsecureBind, OSError) as exc:  # one line, no secrets
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None


# ---- deployment: the coordinator service, workers, run submission, certificates ----
# Every path is resolved against the caller's working directory here, before anything
# starts (the SuperNode and the SuperLink run in their own directories).

CoordOut = Annotated[Path | None, typer.Option(
    "--out-dir", help="Run store, checkpoints, SuperLink state, operator token, logs; "
                      "default $FEDMERGE_HOME, else ~/.fedmerge.")]


def _file(path: Path | None, flag: str) -> Path | None:
    """``path`` made absolute against the working directory; exit 2 naming the flag and
    the file when it is not there."""
    if path is None:
        return None
    resolved = path.expanduser().resolve()
    if not resolved.is_file():
        where = "" if str(path) == str(resolved) else f" (looked for {resolved})"
        typer.echo(f"error: {flag} {path}: no such file{where}", err=True)
        raise typer.Exit(2)
    return resolved


def _dir(path: Path, flag: str) -> Path:
    resolved = path.expanduser().resolve()
    if not resolved.is_dir():
        typer.echo(f"error: {flag} {path}: no such directory (looked for {resolved})", err=True)
        raise typer.Exit(2)
    return resolved


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
    out_dir: CoordOut = None,
    db: Db = "",
    dashboard: Annotated[bool, typer.Option(help="Serve the dashboard too.")] = True,
    dashboard_host: Annotated[str, typer.Option(help="Dashboard interface.")] = "127.0.0.1",
    dashboard_port: Annotated[int, typer.Option(help="Dashboard port.")] = 8080,
    dashboard_token: Annotated[str | None, typer.Option(
        envvar="FEDMERGE_DASHBOARD_TOKEN",
        help="Needed off loopback; prefer the environment variable (argv shows in ps).")
    ] = None,
    isolation: Annotated[str, typer.Option(
        help="warm: each run's ServerApp forked from a process that imported torch once; "
             "subprocess: Flower's fresh process per run.")] = "warm",
) -> None:
    """Run the coordinator service: Flower's SuperLink and the dashboard, until stopped.
    The Control API (run submission) takes only requests with the operator token:
    $FEDMERGE_OPERATOR_TOKEN, else <out-dir>/operator.token (made at first start)."""
    import os

    from fedmerge.deploy.operator import ENV_TOKEN
    from fedmerge.deploy.service import CoordinatorOptions, TlsFiles, run_coordinator

    if isolation not in ("warm", "subprocess"):
        raise typer.BadParameter("--isolation: warm or subprocess")
    tls = None
    if certs is not None:
        tls = TlsFiles.from_dir(_dir(certs, "--certs"))
        for f in (tls.ca, tls.cert, tls.key):
            _file(f, "--certs")
    opts = CoordinatorOptions(
        out_dir=_out(out_dir), host=host, port=port, tls=tls, insecure=insecure,
        supernode_auth=supernode_auth,
        register_keys=tuple(_file(k, "--register-key") for k in register_key or []),  # type: ignore[misc]
        db=db or None, dashboard=dashboard, dashboard_host=dashboard_host,
        dashboard_port=dashboard_port, dashboard_token=dashboard_token,
        operator_token=os.environ.get(ENV_TOKEN) or None, isolation=isolation,
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
    threads: Annotated[int, typer.Option(
        help="torch threads per task; 0: one for a model under 1M parameters (threads cost "
             "more than they give there), torch's default above.")] = 0,
    root_cert: Annotated[Path | None, typer.Option(
        help="CA certificate the SuperLink's TLS certificate is checked against.")] = None,
    auth_key: Annotated[Path | None, typer.Option(
        help="This SuperNode's private key (OpenSSH ECDSA) for authentication.")] = None,
    insecure: Annotated[bool, typer.Option("--insecure", help="Plain HTTP.")] = False,
    isolation: Annotated[str, typer.Option(
        help="warm: one long-running ClientApp process (fast); subprocess: Flower's "
             "default, a process per message.")] = "warm",
    work_dir: Annotated[Path | None, typer.Option(
        help="Flower home and logs of this worker; one per worker on a machine (default "
             "$FEDMERGE_HOME/worker, else ~/.fedmerge/worker).")] = None,
    node_config: Annotated[list[str] | None, typer.Option(
        help="More node config, key=value (TOML value); repeatable.")] = None,
    poll_interval: Annotated[float, typer.Option(
        help="Seconds the SuperNode waits between asks for work (Flower's own: 3); each ask "
             "is one small call to the coordinator.")] = DEFAULT_POLL_S,
    task: Annotated[str, typer.Option(
        help="The task whose format --data is checked against at start (docs/tasks.md).")
    ] = "digits",
    task_config: Annotated[str, typer.Option(help="That task's settings (JSON).")] = "",
    idle_poll_interval: Annotated[float, typer.Option(
        help="Longest wait between asks while no work comes (backed off to from "
             "--poll-interval): an idle worker's cost.")] = DEFAULT_IDLE_POLL_S,
    max_retries: Annotated[int | None, typer.Option(
        help="Restarts of the SuperNode in a row without reaching the coordinator before "
             "giving up (default: never give up).")] = None,
    retry_max_delay: Annotated[float, typer.Option(
        help="Longest wait between those restarts, seconds (1, 2, 4, ... up to it).")] = 30.0,
) -> None:
    """Run a worker: a Flower SuperNode that trains on its data, on its GPU if it has one."""
    from coordinator.home import fedmerge_home
    from fedmerge.deploy.procs import ServiceError
    from fedmerge.deploy.worker import WorkerOptions, run_worker

    if isolation not in ("warm", "subprocess"):
        raise typer.BadParameter("--isolation: warm or subprocess")
    split = None
    if partition is not None:
        i, sep, n = partition.partition("/")
        if not (sep and i.isdigit() and n.isdigit()):
            raise typer.BadParameter(f"--partition {partition!r}: expected I/N, e.g. 0/4")
        split = (int(i), int(n))
    opts = WorkerOptions(
        superlink=coordinator,
        work_dir=work_dir.expanduser().resolve() if work_dir else fedmerge_home() / "worker",
        data_dir=_dir(data, "--data") if data else None, partition=split, device=device,
        train_tensors=train_tensors, threads=threads,
        root_cert=_file(root_cert, "--root-cert"),
        auth_key=_file(auth_key, "--auth-key"), insecure=insecure,
        isolation=isolation,  # type: ignore[arg-type]
        extra_node_config=tuple(node_config or []), poll_interval=poll_interval,
        task=task, task_config=task_config,
        idle_poll_interval=idle_poll_interval, max_retries=max_retries,
        retry_max_delay=retry_max_delay,
    )
    try:
        code = run_worker(opts, echo=lambda m: typer.echo(m, err=True))
    except (ServiceError, ValueError) as exc:  # a TaskError (bad task or data) is a ValueError
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
    app_dir: Annotated[Path, typer.Option(
        "--app", help="The Flower app to send: fedmerge's checkout (its pyproject.toml).")
    ] = Path("."),
    wait: Annotated[bool, typer.Option(help="Follow the run to its end.")] = True,
    queue: Annotated[bool, typer.Option(
        "--queue", help="Wait until no other run is active on the coordinator.")] = False,
    timeout: Annotated[float | None, typer.Option(help="Stop waiting after S seconds.")] = None,
    connect_timeout: Annotated[float, typer.Option(
        help="Seconds to wait for a coordinator that is still starting.")] = 60.0,
    operator_token_file: Annotated[Path | None, typer.Option(
        help="File with the coordinator's operator token (default: $FEDMERGE_OPERATOR_TOKEN, "
             "else this machine's coordinator's <out-dir>/operator.token).")] = None,
    out_dir: OutDir = None,
    db: Db = "",
) -> None:
    """Start a run on the coordinator; exit 0 only if it completed (1 failed, 3 timeout)."""
    import os

    from coordinator.store import resolve_db_url
    from fedmerge.deploy.operator import ENV_TOKEN, client_token
    from fedmerge.deploy.submit import SubmitOptions, write_connection
    from fedmerge.deploy.submit import submit as submit_run

    cert = _file(root_cert, "--root-cert")
    token_file = _file(operator_token_file, "--operator-token-file")
    app_path = _dir(app_dir, "--app")
    items = [_toml_arg(item) for item in run_config or []]

    def start() -> int:
        if superlink is not None:
            write_connection(connection, address=superlink, root_cert=cert, insecure=insecure)
        opts = SubmitOptions(
            app=app_path, connection=connection, run_config=tuple(items), wait=wait,
            queue=queue, timeout=timeout, connect_timeout=connect_timeout,
            operator_token=lambda: client_token(os.environ.get(ENV_TOKEN), token_file),
            db_url=resolve_db_url(db or None, _out(out_dir)),
        )
        return submit_run(opts, echo=typer.echo)

    _exit_with(start)


def _toml_arg(item: str) -> str:
    """A ``-c file.toml`` argument, resolved against the working directory."""
    if item.strip().endswith(".toml") and "=" not in item:
        return str(_file(Path(item.strip()), "--run-config"))
    return item


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
    from fedmerge.certs import CertsExist, make_certs

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
    from fedmerge.deploy.procs import ServiceError

    try:
        code = service()
    except ServiceError as exc:
        typer.echo(f"error: {exc}", err=True)
        code = 2
    raise typer.Exit(code)


def _out(out_dir: Path | None) -> Path:
    """--out-dir resolved against the working directory, or fedmerge's home."""
    from coordinator.home import out_dir_or_home

    return out_dir_or_home(out_dir)


def demo_min_nodes(clients: int, fraction_train: object) -> int:
    """The demo's min-nodes, unless --set gives one: the nodes fraction-train samples
    (all of them by default), so that fraction-train alone decides the sample. A value
    that is not a number is left to the run config's validation (it names the key)."""
    try:
        fraction = 1.0 if fraction_train is None else float(fraction_train)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return clients
    if not 0.0 < fraction <= 1.0:
        return clients
    return max(1, min(clients, math.ceil(fraction * clients)))


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
