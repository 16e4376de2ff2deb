"""The Flower ServerApp: parse the run config, run the federation, record the result."""

from __future__ import annotations

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from coordinator.config import parse_run_config
from coordinator.federation import run_federation
from coordinator.payloads import ignore_readonly_view_warning

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    ignore_readonly_view_warning()
    cfg = parse_run_config(context.run_config)
    run_federation(grid, cfg, flower_run_id=context.run_id)
