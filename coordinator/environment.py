"""The environment every Flower process of ours runs with (docs/design.md, Flower
notes): no telemetry, no update check, no `uv sync` of the run's dependencies (it fails
offline and would pull a CUDA torch), and Ray's servers on loopback. Imports nothing
heavy: the deployment services set it for their children before anything imports torch."""

from __future__ import annotations

import os

QUIET_LOCAL_ENV = {
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_DEDUP_LOGS": "0",
    "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0",
}


def use_loopback_env() -> None:
    """Set QUIET_LOCAL_ENV in this process, keeping what the user set explicitly."""
    for key, value in QUIET_LOCAL_ENV.items():
        os.environ.setdefault(key, value)
