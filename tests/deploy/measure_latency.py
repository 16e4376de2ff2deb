"""Round latency: Flower's simulation engine vs its deployment engine, the latter with
Flower's default isolation (a flwr-clientapp process per message) and with process
isolation plus the warm executor; ``MODE@S`` sets the workers' --poll-interval to S
(``warm@3`` polls as Flower's own SuperNode does). Same run config for all: 3 rounds,
2 nodes, digits.

    python -m tests.deploy.measure_latency [--modes sim,warm,warm@3,subprocess] [--out FILE] \
        [--set fraction-evaluate=0.0 ...]

Prints one line per mode and a JSON summary (docs/deployment.md quotes it). For the
deployment modes it also says where the time from ``fedmerge submit`` to the end of
round 1 went (read from the SuperLink's access log, the run store and the workers'
executor logs), the workers' task times, and a connected worker's idle CPU use (its
process group: the worker, its SuperNode and its executor, over ``--idle-s`` seconds).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import tempfile
import time
import tomllib
from datetime import UTC, datetime
from pathlib import Path

from coordinator.store import make_engine, make_session_factory, repo
from tests.deploy.cluster import LocalCluster

RUN_CONFIG = {"num-server-rounds": 3, "min-nodes": 2, "round-timeout": 600.0}
IDLE_S = 20.0
ACCESS = re.compile(r"^(\S+Z) INFO \[uvicorn.access\] \S+ - \"POST (\S+) HTTP")
TASK = re.compile(r"task \d+ of run \d+: ([\d.]+) s")


def _rounds(db_url: str) -> dict[str, list[float]]:
    """Per round: wall time, sending the train messages, waiting for their replies, the
    merge, and merge-to-commit time (the workers' evaluation and the central one)."""
    engine = make_engine(db_url)
    with make_session_factory(engine)() as s:
        (run,) = repo.list_runs(s)
        rows = repo.rounds_of(s, run.id)
        out = {
            "rounds_s": [(r.finished_at - r.started_at).total_seconds() for r in rows],
            "send_s": [r.send_s for r in rows],
            "train_wait_s": [r.wait_s for r in rows],
            "merge_s": [r.merge_s for r in rows],
            "evaluate_s": [r.evaluate_s for r in rows],
        }
    engine.dispose()
    return out


def _toml(value: object) -> str:
    """A run-config value as `--run-config` reads it (strings quoted, booleans lower)."""
    if isinstance(value, bool):
        return str(value).lower()
    return json.dumps(value) if isinstance(value, str) else str(value)


def _utc(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def _naive_utc(value: datetime) -> float:
    return (value if value.tzinfo else value.replace(tzinfo=UTC)).timestamp()


def _first_call(log: Path, path: str, after: float) -> float | None:
    for line in log.read_text(errors="replace").splitlines():
        m = ACCESS.match(line)
        if m and m.group(2) == path and _utc(m.group(1)) >= after:
            return _utc(m.group(1))
    return None


def breakdown(cluster: LocalCluster, t_submit: float) -> dict:
    """submit -> run created (`flwr run`: its start, the FAB) -> first ServerAppIo call of
    the ServerApp process (SuperExec pickup, flwr-serverapp start) -> run row (the app's
    imports, the store) -> round 1 start (model init, round-0 central evaluation, waiting
    for min-nodes) -> round 1 end."""
    log = cluster.out_dir / "logs" / "superlink.log"
    created = _first_call(log, "/v1/control/start-run", t_submit)
    serverapp = _first_call(log, "/v1/runtime/pull-task-input", created or t_submit)
    engine = make_engine(cluster.db_url)
    with make_session_factory(engine)() as s:
        (run,) = repo.list_runs(s)
        first = repo.rounds_of(s, run.id)[0]
        row, r1_start, r1_end = (_naive_utc(run.started_at), _naive_utc(first.started_at),
                                 _naive_utc(first.finished_at))
    engine.dispose()
    steps = {"flwr_run_s": created, "serverapp_process_s": serverapp, "serverapp_app_s": row,
             "round0_and_wait_s": r1_start, "round1_s": r1_end}
    out, last = {}, t_submit
    for name, t in steps.items():
        out[name] = None if t is None else round(t - last, 2)
        last = t if t is not None else last
    out["submit_to_round1_end_s"] = round(r1_end - t_submit, 2)
    return out


def task_times(cluster: LocalCluster) -> list[float]:
    """Every ClientApp task's time in the workers' warm executors, in order per worker."""
    times: list[float] = []
    for log in sorted(cluster.root.glob("w*/logs/executor.log")):
        times += [float(m.group(1)) for m in TASK.finditer(log.read_text(errors="replace"))]
    return times


def _group_cpu_s(pgid: int) -> float:
    ticks = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid:  # pgrp: the worker was started in its own session
            ticks += int(fields[11]) + int(fields[12])  # utime + stime
    return ticks / os.sysconf("SC_CLK_TCK")


def idle_cpu_percent(pgid: int, seconds: float) -> float:
    """CPU time of a process group over ``seconds`` of wall time, in % of one core."""
    c0, t0 = _group_cpu_s(pgid), time.monotonic()
    time.sleep(seconds)
    return round(100 * (_group_cpu_s(pgid) - c0) / (time.monotonic() - t0), 2)


def simulation(root: Path) -> dict:
    from coordinator.config import parse_run_config
    from coordinator.simulation import simulate

    cfg = parse_run_config({**RUN_CONFIG, "num-clients": 2, "out-dir": str(root)})
    t0 = time.perf_counter()
    result = simulate(cfg, num_clients=2)
    return {"run_s": time.perf_counter() - t0, **_rounds(result.db_url)}


def deployment(root: Path, isolation: str, poll: str = "", idle_s: float = IDLE_S) -> dict:
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
        idle = idle_cpu_percent(workers[0].popen.pid, idle_s)  # connected, no run yet
        overrides = " ".join(f"{k}={_toml(v)}" for k, v in RUN_CONFIG.items())
        t0, t_submit = time.perf_counter(), time.time()
        submit = cluster.submit("--insecure", "-c", f'{overrides} out-dir="{cluster.out_dir}"',
                                timeout=1200)
        run_s = time.perf_counter() - t0
        assert submit.popen.returncode == 0, cluster.all_logs()
        return {"startup_s": ready_s, "run_s": run_s, **_rounds(cluster.db_url),
                "submit_breakdown": breakdown(cluster, t_submit),
                "task_s": task_times(cluster), "idle_worker_cpu_pct": idle}
    finally:
        cluster.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--modes", default="sim,warm,subprocess")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--set", nargs="*", default=[], help="more run config, key=value")
    parser.add_argument("--idle-s", type=float, default=IDLE_S,
                        help="seconds over which a connected worker's idle CPU is measured")
    args = parser.parse_args()
    for item in args.set:
        key, _, value = item.partition("=")
        RUN_CONFIG[key] = tomllib.loads(f"v = {value}")["v"]
    results: dict = {"cpus": os.cpu_count(), "load_before": os.getloadavg()[0],
                     "run_config": RUN_CONFIG}
    for mode in args.modes.split(","):
        with tempfile.TemporaryDirectory(prefix=f"latency-{mode}-") as tmp:
            isolation, _, poll = mode.partition("@")  # warm@3: a 3 s poll, as Flower's own
            r = (simulation(Path(tmp)) if mode == "sim"
                 else deployment(Path(tmp), isolation, poll, args.idle_s))
        r["round1_s"] = r["rounds_s"][0]
        r["later_rounds_mean_s"] = statistics.mean(r["rounds_s"][1:])
        r["later_rounds_median_s"] = statistics.median(r["rounds_s"][1:])
        results[mode] = r
        print(mode, json.dumps(r), flush=True)
    results["load_after"] = os.getloadavg()[0]
    text = json.dumps(results, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
