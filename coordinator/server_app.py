"""The Flower ServerApp: parse the run config, run the federation, record the result."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from coordinator.config import MergeConfig, parse_run_config
from coordinator.federation import run_federation
from coordinator.payloads import ignore_readonly_view_warning

# Where the store is: needed to find the run to resume, given explicitly or not
STORE_KEYS = ("db", "out-dir")

app = ServerApp()


def run_config_of(run_config: Mapping[str, Any], overridden: Collection[str]) -> MergeConfig:
    """The run's MergeConfig. Flower's run_config is pyproject.toml's defaults with the
    user's ``--run-config`` (``overridden``: its keys) laid over them; a resumed run keeps
    its stored config but for the keys the user gave, so for a resume only those (and
    where the store is) count as given: pyproject's num-server-rounds default must not
    cut a resumed run of more rounds short."""
    cfg = parse_run_config(run_config)
    if not cfg.resume_run:
        return cfg
    given = {*overridden, *STORE_KEYS, "resume-run"}
    return parse_run_config({k: v for k, v in run_config.items() if k in given})


@app.main()
def main(grid: Grid, context: Context) -> None:
    ignore_readonly_view_warning()
    cfg = run_config_of(context.run_config, grid.run.override_config)
    run_federation(grid, cfg, flower_run_id=context.run_id)
