"""The dashboard under load while a run commits rounds: 50 clients that open the run page
and poll the JSON API every 1.5 s (as the page's own live.js does) against a dashboard
process on 127.0.0.1, and the run's round times against the same run with nobody
watching. The pollers run in a process of their own (as browsers would), the simulated
run in this one. Prints the figures; tests/faults/test_dashboard_load.py checks the same
load for errors (no timing is asserted there).

    python -m bench.dashboard_load [--rounds 8] [--clients 4] [--pollers 50] [--no-page]
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx

LOCKED = "database is locked"


REQUEST_TIMEOUT_S = 300.0  # a slow answer is measured; only no answer is an error


def api_paths(run_id: str) -> list[str]:
    """What a watching browser (its live.js) and a script polling the API ask for."""
    return [f"/api/runs/{run_id}", f"/api/runs/{run_id}/rounds",
            f"/api/runs/{run_id}/clients", "/api/runs"]


@dataclass
class PollStats:
    requests: int = 0
    errors: list[str] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    page_latencies: list[float] = field(default_factory=list)


def _get(client: httpx.Client, path: str, stats: PollStats, page: bool = False) -> None:
    t0 = time.perf_counter()
    try:
        r = client.get(path)
    except httpx.HTTPError as exc:
        stats.errors.append(f"{path}: {type(exc).__name__}: {exc}")
        return
    (stats.page_latencies if page else stats.latencies).append(time.perf_counter() - t0)
    stats.requests += 1
    if r.status_code != 200 or LOCKED in r.text:
        stats.errors.append(f"{path}: {r.status_code} {r.text[:200]}")


def watch(base: str, run_id: str, stop: threading.Event, stats: PollStats, interval_s: float,
          max_s: float, open_page: bool = True) -> None:
    """One client: opens the run page, then polls the API every ``interval_s`` until
    ``stop`` (or ``max_s``); an answer that is not a 200, or that mentions a locked
    database, and a request that gets no answer are errors."""
    give_up = time.monotonic() + max_s
    with httpx.Client(base_url=base, timeout=REQUEST_TIMEOUT_S) as client:
        if open_page:
            _get(client, f"/runs/{run_id}", stats, page=True)
        while not stop.is_set() and time.monotonic() < give_up:
            for path in api_paths(run_id):
                _get(client, path, stats)
            stop.wait(interval_s)


def start_watchers(base: str, run_id: str, n: int, *, interval_s: float, max_s: float,
                   open_page: bool = True
                   ) -> tuple[threading.Event, list[threading.Thread], list[PollStats]]:
    stop = threading.Event()
    stats = [PollStats() for _ in range(n)]
    threads = [threading.Thread(target=watch, args=(base, run_id, stop, s, interval_s, max_s,
                                                    open_page), daemon=True) for s in stats]
    for t in threads:
        t.start()
    return stop, threads, stats


def _first_run(base: str, stop, max_s: float) -> str | None:
    """The id of the first run the dashboard lists (None if ``stop`` comes first)."""
    give_up = time.monotonic() + max_s
    with httpx.Client(base_url=base, timeout=REQUEST_TIMEOUT_S) as client:
        while not stop.is_set() and time.monotonic() < give_up:
            runs = client.get("/api/runs").json()["data"]
            if runs:
                return runs[0]["id"]
            stop.wait(0.1)
    return None


def _watch_in_process(base: str, n: int, interval_s: float, max_s: float,
                      open_page: bool, stop, results) -> None:
    """The body of ``PollerProcess``: once the run is listed, ``n`` watchers until
    ``stop``, their stats summed."""
    run_id = _first_run(base, stop, max_s)
    if run_id is None:
        results.put(PollStats())
        return
    inner, threads, stats = start_watchers(base, run_id, n, interval_s=interval_s,
                                           max_s=max_s, open_page=open_page)
    stop.wait(max_s)
    inner.set()
    for t in threads:
        t.join(60)
    results.put(merged(stats))


def merged(stats: Sequence[PollStats]) -> PollStats:
    total = PollStats()
    for s in stats:
        total.requests += s.requests
        total.errors += s.errors
        total.latencies += s.latencies
        total.page_latencies += s.page_latencies
    return total


class PollerProcess:
    """The watchers in a process of their own, as browsers are: their HTTP clients'
    CPU and GIL are not the coordinator's (the simulated run is in this process). Started
    before the run, it waits for the dashboard to list it, then watches it."""

    def __init__(self, base: str, n: int, *, interval_s: float, max_s: float,
                 open_page: bool = True) -> None:
        ctx = multiprocessing.get_context("spawn")
        self._stop, self._results = ctx.Event(), ctx.Queue()
        self._proc = ctx.Process(target=_watch_in_process, daemon=True, args=(
            base, n, interval_s, max_s, open_page, self._stop, self._results))
        self._proc.start()

    def stop(self, timeout_s: float = 120.0) -> PollStats:
        self._stop.set()
        stats = self._results.get(timeout=timeout_s)
        self._proc.join(timeout_s)
        return stats


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_dashboard(out_dir: Path, port: int, log: Path, timeout_s: float = 60.0
                    ) -> subprocess.Popen:
    """``fedmerge dashboard`` in its own process on 127.0.0.1:port; returns once it answers."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    env.pop("FEDMERGE_DB_URL", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "fedmerge.cli", "dashboard", "--out-dir", str(out_dir),
         "--port", str(port)],
        stdout=log.open("w"), stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
    )
    give_up = time.monotonic() + timeout_s
    while time.monotonic() < give_up:
        if proc.poll() is not None:
            raise RuntimeError(f"the dashboard exited ({proc.returncode}): {log.read_text()}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/api/runs", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"the dashboard did not answer in {timeout_s} s")


def _round_times(db: Path, run_id: str) -> list[float]:
    from coordinator.store import make_engine, make_session_factory, repo

    engine = make_engine(f"sqlite:///{db}")
    with make_session_factory(engine)() as s:
        rows = [r for r in repo.rounds_of(s, run_id) if r.status == "committed"]
    engine.dispose()
    return [(r.finished_at - r.started_at).total_seconds() for r in rows]


def _run(out: Path, rounds: int, clients: int, pollers: int, open_page: bool = True
         ) -> tuple[list[float], PollStats]:
    from coordinator.config import parse_run_config
    from coordinator.simulation import simulate

    cfg = parse_run_config({"num-server-rounds": rounds, "num-clients": clients,
                            "min-nodes": clients, "out-dir": str(out), "seed": 0})
    total = PollStats()
    if not pollers:
        res = simulate(cfg, num_clients=clients)
        return _round_times(out / "fedmerge.db", res.run_id), total
    port = free_port()
    out.mkdir(parents=True, exist_ok=True)
    proc = None
    watchers: list[PollerProcess] = []

    try:
        # the store must exist before the dashboard starts: create it by migrating
        from coordinator.store import migrated_engine
        with migrated_engine(f"sqlite:///{out / 'fedmerge.db'}"):
            pass
        proc = start_dashboard(out, port, out / "dashboard.log")
        watchers.append(PollerProcess(f"http://127.0.0.1:{port}", pollers, interval_s=1.5,
                                      max_s=3600, open_page=open_page))
        res = simulate(cfg, num_clients=clients)
    finally:
        if watchers:
            total = watchers[0].stop()
        if proc is not None:
            proc.terminate()
            proc.wait(30)
    # the pollers start while round 1 runs: only the rounds after it count
    return _round_times(out / "fedmerge.db", res.run_id)[1:], total


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--clients", type=int, default=4, help="simulated SuperNodes")
    ap.add_argument("--pollers", type=int, default=50, help="concurrent dashboard clients")
    ap.add_argument("--no-page", action="store_true",
                    help="the clients only poll the API (no run page with its plots)")
    args = ap.parse_args(argv)
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        quiet, _ = _run(Path(tmp) / "unwatched", args.rounds, args.clients, 0)
        watched, stats = _run(Path(tmp) / "watched", args.rounds, args.clients, args.pollers,
                              open_page=not args.no_page)
    quiet = quiet[1:]  # the same rounds as the watched run's
    ratio = statistics.mean(watched) / statistics.mean(quiet)
    lat = sorted(stats.latencies) or [float("nan")]
    page = sorted(stats.page_latencies) or [float("nan")]
    print(f"rounds {args.rounds}, {args.clients} clients, {args.pollers} pollers"
          f"{' (API only)' if args.no_page else ''}")
    print(f"unwatched round s: mean {statistics.mean(quiet):.3f} median "
          f"{statistics.median(quiet):.3f}")
    print(f"watched   round s: mean {statistics.mean(watched):.3f} median "
          f"{statistics.median(watched):.3f}  (x{ratio:.2f}, median "
          f"x{statistics.median(watched) / statistics.median(quiet):.2f})")
    print("round s, unwatched:", " ".join(f"{t:.3f}" for t in quiet),
          "| watched:", " ".join(f"{t:.3f}" for t in watched))
    print(f"dashboard: {stats.requests} requests, {len(stats.errors)} errors, latency p50 "
          f"{1e3 * lat[len(lat) // 2]:.0f} ms p95 {1e3 * lat[int(0.95 * (len(lat) - 1))]:.0f} ms"
          f"; run page p50 {page[len(page) // 2]:.1f} s max {page[-1]:.1f} s")
    print("load average (1, 5, 15 min) before: {:.1f} {:.1f} {:.1f}, after: {:.1f} {:.1f} "
          "{:.1f}".format(*load_before, *os.getloadavg()))
    for e in stats.errors[:5]:
        print("  error:", e)


if __name__ == "__main__":
    main()
