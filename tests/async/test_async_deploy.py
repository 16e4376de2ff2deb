"""The async loop on Flower's deployment engine (SuperLink and SuperNodes as processes
on 127.0.0.1): the same grid calls as in simulation, so the same run completes."""

from __future__ import annotations

from pathlib import Path

import pytest

from coordinator.store import make_engine, make_session_factory, repo
from tests.deploy.cluster import LocalCluster

pytestmark = pytest.mark.deployment


def test_two_workers_four_versions_through_the_deployment_engine(tmp_path: Path) -> None:
    cluster = LocalCluster(tmp_path)
    try:
        coordinator = cluster.start_coordinator("--insecure")
        workers = [cluster.start_worker(f"w{i}", "--insecure", "--partition", f"{i}/2")
                   for i in range(2)]
        cluster.wait_coordinator(coordinator)
        for w in workers:
            cluster.wait_worker(w)
        submit = cluster.submit("--insecure", "-c", 'merge="async" buffer-size=1 '
                                "num-server-rounds=4 min-nodes=2 round-timeout=60.0 "
                                f"out-dir=\"{cluster.out_dir}\"")
        assert submit.popen.returncode == 0, cluster.all_logs()
        assert "finished:completed" in submit.text()

        engine = make_engine(cluster.db_url)
        with make_session_factory(engine)() as s:
            (run,) = repo.list_runs(s)
            rounds = list(repo.rounds_of(s, run.id))
            updates = list(repo.updates_of(s, run.id))
        engine.dispose()
    finally:
        cluster.close()
    assert run.status == "completed"
    assert [(r.number, r.status) for r in rounds] == [(v, "committed") for v in (1, 2, 3, 4)]
    merged = [u for u in updates if u.accepted]
    assert len(merged) == 4 and len({u.metrics["update-id"] for u in merged}) == 4
    assert all("staleness" in u.metrics and "base-version" in u.metrics for u in merged)
