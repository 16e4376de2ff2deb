"""Round latency: Flower's simulation engine vs its deployment engine, the latter with
Flower's default isolation (a flwr-clientapp process per message) and with process
isolation plus the warm executor; ``MODE@S`` sets the workers' --poll-interval to S
(``warm@3`` polls as Flower's own SuperNode does). Same run config for all: 3 rounds,
2 nodes, digits.

    python -m tests.deploy.measure_latency [--modes sim,warm,warm@3,subprocess] [--out FILE] \
        [--set fraction-evaluate=0.0 ...]

Prints one line per round and a JSON summary (docs/deployment.md quotes it).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
import tomllib
from pathlib import Path

from coordinator.store import make_engine, make_session_factory, repo
from tests.deploy.cluster import LocalCluster

RUN_CONFIG = {"num-server-rounds": 3, "min-nodes": 2, "round-timeout": 600.0}


def _rounds(db_url: str) -> dict[str, list[float]]:
    """Per round: wall time, time waiting for train replies, merge-to-commit time (the
    workers' evaluation and the central one)."""
    engine = make_engine(db_url)
    with make_session_factory(engine)() as s:
        (run,) = repo.list_runs(s)
        rows = repo.rounds_of(s, run.id)
        out = {
            "rounds_s": [(r.finished_at - r.started_at).total_seconds() for r in rows],
            "train_wait_s": [r.wait_s for r in rows],
            "evaluate_s": [r.evaluate_s for r in rows],
        }
    engine.dispose()
    return out


def simulation(root: Path) -> dict:
    from coordinator.config import parse_run_config
    from coordinator.simulation import simulate

    cfg = parse_run_config({**RUN_CONFIG, "num-clients": 2, "out-dir": str(root)})
    t0 = time.perf_counter()
    result = simulate(cfg, num_clients=2)
    return {"run_s": time.perf_counter() - t0, **_rounds(result.db_url)}


def deployment(root: Path, isolation: str, poll: str = "") -> dict:
    cluster = LocalCluster(root)
    try:
        coordinator = cluster.start_coordinator("--insecure")
        extra = ("--poll-interval", poll) if poll else ()
        workers = [cluster.start_worker(f"w{i}", "--insecure", "--partition", f"{i}/2",
                                        "--isolation", isolation, *extra) for i in range(2)]
        t0 = time.perf_counter()
        cluster.wait_coordinator(coordinator)
        for w in workers:
            cluster.wait_worker(w, timeout=300)
        ready_s = time.perf_counter() - t0
        overrides = " ".join(f"{k}={v}" for k, v in RUN_CONFIG.items())
        t0 = time.perf_counter()
        submit = cluster.submit("--insecure", "-c", f'{overrides} out-dir="{cluster.out_dir}"',
                                timeout=1200)
        run_s = time.perf_counter() - t0
        assert submit.popen.returncode == 0, cluster.all_logs()
        return {"startup_s": ready_s, "run_s": run_s, **_rounds(cluster.db_url)}
    finally:
        cluster.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--modes", default="sim,warm,subprocess")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--set", nargs="*", default=[], help="more run config, key=value")
    args = parser.parse_args()
    for item in args.set:
        key, _, value = item.partition("=")
        RUN_CONFIG[key] = tomllib.loads(f"v = {value}")["v"]
    results: dict = {"cpus": os.cpu_count(), "load_before": os.getloadavg()[0],
                     "run_config": RUN_CONFIG}
    for mode in args.modes.split(","):
        with tempfile.TemporaryDirectory(prefix=f"latency-{mode}-") as tmp:
            isolation, _, poll = mode.partition("@")  # warm@3: a 3 s poll, as Flower's own
            r = simulation(Path(tmp)) if mode == "sim" else deployment(Path(tmp), isolation,
                                                                       poll)
        r["round1_s"] = r["rounds_s"][0]
        r["later_rounds_mean_s"] = statistics.mean(r["rounds_s"][1:])
        results[mode] = r
        print(mode, json.dumps(r), flush=True)
    results["load_after"] = os.getloadavg()[0]
    text = json.dumps(results, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
