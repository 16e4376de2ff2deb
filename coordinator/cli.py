"""The ``fedmerge`` command: parses arguments and calls into the rest."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

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
