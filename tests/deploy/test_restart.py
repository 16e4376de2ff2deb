"""The coordinator's SuperLink SIGKILLed and started again while workers run: the workers
say so on their terminals, reconnect by themselves, and the next runs complete on them
without a restart; a second run submitted with --queue waits for the first."""

from __future__ import annotations

import re

import pytest

from coordinator.store import make_engine, make_session_factory, repo
from tests.deploy.cluster import LocalCluster

pytestmark = pytest.mark.deployment


def test_workers_outlive_a_coordinator_restart_and_queued_runs_follow(
    cluster: LocalCluster,
) -> None:
    coordinator = cluster.start_coordinator("--insecure")
    workers = [cluster.start_worker(f"w{i}", "--insecure", "--partition", f"{i}/2",
                                    "--retry-max-delay", "2") for i in range(2)]
    cluster.wait_coordinator(coordinator)
    for w in workers:
        cluster.wait_worker(w)
        cluster.wait_log(w, "connected to the coordinator at " + cluster.address)
    node_ids = {re.search(r"node id (\d+)", w.text()).group(1) for w in workers}  # type: ignore[union-attr]

    cluster.kill(coordinator)
    for w in workers:
        cluster.wait_log(w, f"coordinator at {cluster.address} not reachable", timeout=90)
    again = cluster.start_coordinator("--insecure", name="coordinator-again")
    cluster.wait_coordinator(again)
    for w in workers:
        cluster.wait_log(w, "again", timeout=120)  # Flower's backoff: at most 20 s a try

    config = f'num-server-rounds=2 min-nodes=2 fraction-evaluate=0.0 out-dir="{cluster.out_dir}"'
    first = cluster.submit("--insecure", "-c", config, "--no-wait")
    assert first.popen.returncode == 0, cluster.all_logs()
    first_id = cluster.flower_run_id(first)
    queued = cluster.submit("--insecure", "--queue", "-c", config.replace("=2 ", "=1 ", 1))
    assert queued.popen.returncode == 0, cluster.all_logs()
    assert f"queued: waiting for {first_id}" in queued.text(), queued.text()
    assert "finished:completed" in queued.text()
    assert re.search(r"store run id [0-9a-f]{32}", queued.text()), queued.text()

    assert all(w.popen.poll() is None for w in workers), cluster.all_logs()
    engine = make_engine(cluster.db_url)
    try:
        with make_session_factory(engine)() as s:
            runs = {r.flower_run_id: r for r in repo.list_runs(s)}
            assert runs[str(first_id)].status == "completed"
            assert [r.status for r in runs.values()] == ["completed", "completed"]
            later = max(runs.values(), key=lambda r: r.started_at)
            first_run = runs[str(first_id)]
            assert later.started_at >= first_run.finished_at  # queued: not concurrent
            updates = repo.updates_of(s, later.id)
            assert {u.node_id for u in updates} == node_ids  # the same SuperNodes
    finally:
        engine.dispose()
