"""Flower's deployment engine end to end, on 127.0.0.1: ``fedmerge coordinator`` (SuperLink),
``fedmerge worker`` (SuperNodes with the warm ClientApp executor), ``fedmerge submit``,
then the run as the store recorded it."""

from __future__ import annotations

import json
import subprocess
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

from client.data import digits_split
from client.local_data import write_local_data
from coordinator.store import make_engine, make_session_factory, repo
from fedmerge.certs import make_certs
from fedmerge.deploy.procs import flwr_executable, free_port
from fedmerge.deploy.submit import write_connection
from tests.deploy.cluster import REPO, LocalCluster

pytestmark = pytest.mark.deployment


@dataclass
class Stored:
    status: str
    rounds: list
    updates: list
    central: dict[int, float]
    federated: list


def stored_run(db_url: str) -> Stored:
    engine = make_engine(db_url)
    try:
        with make_session_factory(engine)() as s:
            (run,) = repo.list_runs(s)
            evals = list(repo.evaluations_of(s, run.id))
            return Stored(
                run.status, list(repo.rounds_of(s, run.id)), list(repo.updates_of(s, run.id)),
                {e.round_number: e.accuracy for e in evals if e.kind == "central"},
                [e for e in evals if e.kind == "federated"],
            )
    finally:
        engine.dispose()


def test_two_workers_three_rounds_through_the_deployment_engine(cluster: LocalCluster) -> None:
    dashboard_port = free_port()
    coordinator = cluster.start_coordinator("--insecure", dashboard_port=dashboard_port)
    workers = [cluster.start_worker(f"w{i}", "--insecure", "--partition", f"{i}/2")
               for i in range(2)]
    cluster.wait_coordinator(coordinator)
    for w in workers:
        cluster.wait_worker(w)

    submit = cluster.submit("--insecure", "-c", "num-server-rounds=3 min-nodes=2 "
                            f"round-timeout=60.0 out-dir=\"{cluster.out_dir}\"")
    assert submit.popen.returncode == 0, cluster.all_logs()
    assert "finished:completed" in submit.text()

    run = stored_run(cluster.db_url)
    assert run.status == "completed"
    assert [(r.number, r.status) for r in run.rounds] == [(i, "committed") for i in (1, 2, 3)]
    nodes = {u.node_id for u in run.updates}
    assert len(nodes) == 2
    for r in (1, 2, 3):
        this = [u for u in run.updates if u.round_number == r]
        assert {u.node_id for u in this} == nodes and all(u.accepted for u in this)
        assert {u.partition_id for u in this} == {0, 1}
    # both workers evaluated theta_0..theta_3, folded into the train replies of rounds 1-3
    # and, for the last theta, one evaluate exchange
    assert sorted(e.round_number for e in run.federated) == [0, 1, 2, 3]
    assert all(len(e.metrics["clients"]) == 2 for e in run.federated)
    assert run.central[3] > run.central[0], run.central
    with urllib.request.urlopen(f"http://127.0.0.1:{dashboard_port}/", timeout=10) as page:
        assert page.status == 200  # the coordinator serves the dashboard over the same store

    # A run whose ServerApp fails: `flwr run` would exit 0, `fedmerge submit` must not.
    failed = cluster.submit("--insecure", "-c", 'optimizer="sgdd"', timeout=120)
    assert failed.popen.returncode == 1, failed.text()
    assert "finished:failed" in failed.text()


def test_tls_and_supernode_auth_refuse_an_unregistered_worker(cluster: LocalCluster) -> None:
    certs = make_certs(cluster.root / "certs", nodes=3)
    (k0, p0), (k1, p1), (k2, _) = certs.node_keys
    coordinator = cluster.start_coordinator(
        "--certs", str(cluster.root / "certs"), "--register-key", str(p0),
        "--register-key", str(p1),
    )
    cluster.wait_log(coordinator, "SuperNode key", count=2)  # keys registered before workers
    tls = ["--root-cert", str(certs.ca_cert)]
    x, y, _, _ = digits_split()  # the second worker brings its own files (--data)
    own = cluster.root / "own-data"
    write_local_data(own, x[1::2][:400], y[1::2][:400], x_val=x[1::2][400:], y_val=y[1::2][400:])
    workers = [
        cluster.start_worker("w0", *tls, "--auth-key", str(k0), "--partition", "0/2"),
        cluster.start_worker("w1", *tls, "--auth-key", str(k1), "--data", str(own),
                             "--node-config", "partition-id=1"),
    ]
    intruder = cluster.start_worker("intruder", *tls, "--auth-key", str(k2), "--partition",
                                    "0/2", "--isolation", "subprocess", "--max-retries", "0")
    for w in workers:
        cluster.wait_worker(w)
    try:
        assert intruder.popen.wait(timeout=90) == 1
    except subprocess.TimeoutExpired:
        raise AssertionError("the unregistered worker was not refused\n"
                             + intruder.logs()) from None
    assert "refused this SuperNode" in intruder.text(), intruder.logs()

    run_out = cluster.root / "run-out"  # checkpoints here; the store is the coordinator's
    submit = cluster.submit(*tls, "-c", "num-server-rounds=2 min-nodes=2 fraction-evaluate=0.0 "
                            f"round-timeout=60.0 out-dir=\"{run_out}\"")
    assert submit.popen.returncode == 0, cluster.all_logs()
    assert not (run_out / "fedmerge.db").exists()
    assert len(list(run_out.glob("checkpoints/*/*"))) >= 2
    run = stored_run(cluster.db_url)
    assert run.status == "completed"
    assert [r.status for r in run.rounds] == ["committed", "committed"]
    _control_api_refuses_a_client_without_the_token(cluster, certs.ca_cert)
    registered = _registered_node_ids(cluster)
    assert len(registered) == 2
    assert {u.node_id for u in run.updates} == registered
    assert all(u.accepted for u in run.updates)
    assert {u.partition_id: u.num_examples for u in run.updates}[1] == 400  # its train.npz


def _control_api_refuses_a_client_without_the_token(cluster: LocalCluster, ca: Path) -> None:
    """Issue 13's probe: the public CA certificate alone, no operator token."""
    home = cluster.root / "stranger"
    write_connection("c", address=cluster.address, root_cert=ca, flwr_home=home)
    env = {**cluster.env, "FLWR_HOME": str(home)}
    superlink_log = cluster.out_dir / "logs" / "superlink.log"
    runs_before = superlink_log.read_text(errors="replace").count("Created run")
    for argv in (["list", "c"], ["run", str(REPO), "c"], ["supernode", "list", "c"]):
        done = subprocess.run([flwr_executable("flwr"), *argv], env=env, capture_output=True,
                              text=True, timeout=120)
        out = done.stdout + done.stderr
        assert done.returncode != 0 and "Authentication failed" in out, (argv, out)
    log = superlink_log.read_text(errors="replace")
    assert '"POST /v1/control/list-runs HTTP/1.1" 401' in log
    assert log.count("Created run") == runs_before  # the refused submission made no run


def _registered_node_ids(cluster: LocalCluster) -> set[str]:
    argv = [flwr_executable("flwr"), "supernode", "list", "test", "--format", "json"]
    done = subprocess.run(argv, env=cluster.env, capture_output=True, text=True, timeout=60)
    payload = json.loads(done.stdout[done.stdout.find("{"):])
    return {n["node-id"] for n in payload["nodes"]}


def test_a_worker_killed_mid_run_the_rest_finish_it(cluster: LocalCluster) -> None:
    timeout = 15.0
    coordinator = cluster.start_coordinator("--insecure")
    workers = [cluster.start_worker(f"w{i}", "--insecure", "--partition", f"{i}/3")
               for i in range(3)]
    cluster.wait_coordinator(coordinator)
    for w in workers:
        cluster.wait_worker(w)

    submit = cluster.submit(
        "--insecure", "-c", "num-server-rounds=3 min-nodes=2 fraction-evaluate=0.0 "
        f"round-timeout={timeout} out-dir=\"{cluster.out_dir}\"", wait=False,
    )
    _wait_for_round(cluster, 2, submit)
    cluster.kill(workers[2])  # SIGKILL the worker, its SuperNode and its executor
    try:
        submit.popen.wait(timeout=200)
    except subprocess.TimeoutExpired:
        raise AssertionError("the run did not finish\n" + cluster.all_logs()) from None
    assert submit.popen.returncode == 0, cluster.all_logs()

    run = stored_run(cluster.db_url)
    assert run.status == "completed"
    assert [(r.number, r.status) for r in run.rounds] == [(i, "committed") for i in (1, 2, 3)]
    per_round = {r: {u.node_id for u in run.updates if u.round_number == r and u.accepted}
                 for r in (1, 2, 3)}
    assert len(per_round[1]) == 3
    dead = (per_round[1] - per_round[3]).pop()
    assert len(per_round[3]) == 2 and dead not in per_round[3]
    engine = make_engine(cluster.db_url)
    with make_session_factory(engine)() as s:
        (row,) = repo.list_runs(s)
        events = [e.message for e in repo.events_of(s, row.id) if e.kind == "round-timeout"]
    engine.dispose()
    assert any(m.startswith("round 3: no train reply from node(s) " + dead) for m in events), events
    last = run.rounds[-1]
    # The dead node was still listed, so round 3 waited out its round-timeout for it.
    assert last.wait_s >= 0.9 * timeout, (last.wait_s, last.metrics)


def _wait_for_round(cluster: LocalCluster, number: int, submit, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if submit.popen.poll() is not None:
            raise AssertionError(f"submit ended early\n{cluster.all_logs()}")
        if (cluster.out_dir / "fedmerge.db").exists():
            try:
                if any(r.number >= number for r in stored_run(cluster.db_url).rounds):
                    return
            except ValueError:  # no run row yet
                pass
        time.sleep(0.25)
    raise AssertionError(f"round {number} did not start\n{cluster.all_logs()}")
