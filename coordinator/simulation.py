"""Flower's simulation engine (Ray) on this machine, driven from Python: for the demo,
the benchmarks and the tests. ``flwr run .`` runs the same ServerApp and ClientApp."""

from __future__ import annotations

import os
from collections.abc import Callable

from flwr.app import Context
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp

from coordinator.config import MergeConfig
from coordinator.environment import use_loopback_env
from coordinator.federation import FederationResult, run_federation
from coordinator.payloads import ignore_readonly_view_warning
from coordinator.store import RoundRecord

ServerMain = Callable[[Grid, Context], None]


def run_server_main(
    main: ServerMain,
    *,
    num_clients: int,
    client_app: ClientApp,
    client_cpus: float = 1.0,
    client_gpus: float = 0.0,
    total_cpus: int | None = None,
    verbose: bool = False,
) -> None:
    """Run ``main`` as the ServerApp of one start of Flower's simulation engine (Ray on
    127.0.0.1) with ``num_clients`` SuperNodes; raises what ``main`` raised, which
    ``run_simulation`` itself only logs."""
    use_loopback_env()
    ignore_readonly_view_warning()
    from flwr.simulation import run_simulation  # after the environment is set

    errors: list[BaseException] = []
    server = ServerApp()

    @server.main()
    def _main(grid: Grid, context: Context) -> None:
        try:
            main(grid, context)
        except BaseException as exc:
            errors.append(exc)
            raise

    cpus = total_cpus or os.cpu_count() or 1
    backend = {
        "client_resources": {"num_cpus": client_cpus, "num_gpus": client_gpus},
        "init_args": {
            "num_cpus": cpus,
            "num_gpus": 1 if client_gpus > 0 else 0,
            "_node_ip_address": "127.0.0.1",
            "include_dashboard": False,
            "logging_level": "info" if verbose else "error",
            "log_to_driver": verbose,
        },
    }
    run_simulation(
        server_app=server, client_app=client_app, num_supernodes=num_clients,
        backend_config=backend, verbose_logging=verbose,
    )
    if errors:
        raise errors[0]


def simulate(
    cfg: MergeConfig,
    *,
    num_clients: int,
    client_app: ClientApp | None = None,
    client_cpus: float = 1.0,
    client_gpus: float = 0.0,
    total_cpus: int | None = None,
    on_commit: Callable[[RoundRecord], None] | None = None,
    verbose: bool = False,
) -> FederationResult:
    """Run ``cfg`` on ``num_clients`` simulated SuperNodes; returns the federation's result
    (raises what the coordinator raised)."""
    if client_app is None:
        from client.client_app import app as client_app

    results: list[FederationResult] = []

    def main(grid: Grid, context: Context) -> None:
        results.append(run_federation(grid, cfg, flower_run_id=context.run_id,
                                      on_commit=on_commit))

    run_server_main(main, num_clients=num_clients, client_app=client_app,
                    client_cpus=client_cpus, client_gpus=client_gpus, total_cpus=total_cpus,
                    verbose=verbose)
    if not results:
        raise RuntimeError("the simulation ended without running the coordinator")
    return results[0]
