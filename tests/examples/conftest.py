"""The example task must import here, in Ray workers and in worker processes; its
deployment test uses the deployment tests' loopback cluster."""

from __future__ import annotations

from tests.client.example_task import example_importable
from tests.deploy.conftest import cluster  # noqa: F401 - the fixture, shared

example_importable()
