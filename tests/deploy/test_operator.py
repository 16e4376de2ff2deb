"""What an operator meets, without a running federation: paths checked against the
working directory, one home, run ids, the Control API's door (token and path allow-list),
the work-dir lock, the worker's connection state and its backoff."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from starlette.testclient import TestClient
from typer.testing import CliRunner

from coordinator.home import fedmerge_home, out_dir_or_home
from fedmerge.cli import app
from fedmerge.deploy.connection import ConnectionWatch
from fedmerge.deploy.lock import WorkDirBusy, WorkDirLock
from fedmerge.deploy.operator import (
    client_token,
    coordinator_token_file,
    store_for_flwr_cli,
)
from fedmerge.deploy.procs import ServiceError
from fedmerge.deploy.submit import check_run_config
from fedmerge.deploy.superlink import FleetOnlyOffLoopback, operator_authn
from fedmerge.deploy.worker import WorkerOptions, check_worker_options, retry_delay

REPO = Path(__file__).resolve().parents[2]


# ---- paths, home ----------------------------------------------------------------------


def test_a_missing_relative_path_is_named_with_its_flag(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    res = CliRunner().invoke(app, ["worker", "--coordinator", "h:1", "--partition", "0/2",
                                   "--root-cert", "certs/ca.pem"])
    assert res.exit_code == 2
    assert "--root-cert certs/ca.pem: no such file" in res.output
    assert str(tmp_path / "certs" / "ca.pem") in res.output
    res = CliRunner().invoke(app, ["coordinator", "--certs", "nowhere", "--no-dashboard"])
    assert res.exit_code == 2 and "--certs nowhere: no such directory" in res.output


def test_worker_paths_are_made_absolute_before_the_supernode_starts(
    tmp_path: Path, monkeypatch
) -> None:
    (tmp_path / "certs").mkdir()
    for name in ("ca.pem", "node-0.key"):
        (tmp_path / "certs" / name).write_text("x")
    monkeypatch.chdir(tmp_path)
    seen: list[WorkerOptions] = []
    monkeypatch.setattr("fedmerge.deploy.worker.run_worker",
                        lambda opts, echo: seen.append(opts) or 0)
    res = CliRunner().invoke(app, ["worker", "--coordinator", "h:1", "--partition", "0/2",
                                   "--root-cert", "certs/ca.pem", "--auth-key",
                                   "certs/node-0.key", "--work-dir", "w0"])
    assert res.exit_code == 0, res.output
    (opts,) = seen
    assert opts.root_cert == tmp_path / "certs" / "ca.pem"
    assert opts.auth_key == tmp_path / "certs" / "node-0.key"
    assert opts.work_dir == tmp_path / "w0"


def test_one_home_for_the_coordinator_and_the_cli(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("FEDMERGE_HOME", str(tmp_path / "home"))
    assert fedmerge_home() == tmp_path / "home"
    assert out_dir_or_home(None) == tmp_path / "home"
    assert out_dir_or_home("~/.fedmerge") == tmp_path / "home"  # pyproject's default
    monkeypatch.chdir(tmp_path)
    assert out_dir_or_home("elsewhere") == tmp_path / "elsewhere"
    monkeypatch.delenv("FEDMERGE_HOME")
    assert fedmerge_home() == Path("~/.fedmerge").expanduser().resolve()


# ---- submit's checks ------------------------------------------------------------------


def test_submit_names_an_unknown_key_and_points_at_the_app(tmp_path: Path) -> None:
    check_run_config(REPO, ["num-server-rounds=2 min-nodes=2"])
    with pytest.raises(ServiceError, match="unknown key.*num-rounds") as bad:
        check_run_config(REPO, ["num-server-rounds=2 num-rounds=3"])
    assert "num-server-rounds" not in str(bad.value).split("(")[0]
    with pytest.raises(ServiceError, match="--app DIR"):
        check_run_config(tmp_path, [])


# ---- the Control API's door -----------------------------------------------------------


def test_the_operator_plugin_accepts_only_the_token() -> None:
    from flwr.common.constant import ACCESS_TOKEN_KEY

    plugin = operator_authn("s3cret-operator-token")
    assert plugin.validate_tokens_in_metadata([(ACCESS_TOKEN_KEY, "s3cret-operator-token")])[0]
    assert plugin.validate_tokens_in_metadata([(ACCESS_TOKEN_KEY, "s3cret-operator-tokeN")]) \
        == (False, None)
    assert plugin.validate_tokens_in_metadata([]) == (False, None)
    assert plugin.refresh_tokens([(ACCESS_TOKEN_KEY, "anything")]) == (None, None)


def _echo_app() -> FleetOnlyOffLoopback:
    async def ok(request):  # noqa: ANN001, ANN202
        return PlainTextResponse("reached")

    inner = Starlette(routes=[Route("/{path:path}", ok, methods=["GET", "POST"])])
    return FleetOnlyOffLoopback(inner)


@pytest.mark.parametrize("path", ["/v1/runtime/acquire-task", "/v1/runtime/pull-task-input",
                                  "/docs", "/openapi.json", "/health", "/v1/other/x"])
def test_off_loopback_only_fleet_and_control_routes_are_served(path: str) -> None:
    remote = TestClient(_echo_app(), client=("10.0.0.7", 40000))
    local = TestClient(_echo_app(), client=("127.0.0.1", 40000))
    assert remote.post(path).status_code == 403
    assert local.post(path).text == "reached"
    for public in ("/v1/fleet/pull-messages", "/v1/control/list-runs"):
        assert remote.post(public).text == "reached"  # Control: the token decides


def test_token_files_are_private_and_reused(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(os, "umask", os.umask)  # restore whatever the test sets
    old = os.umask(0)
    try:
        path = coordinator_token_file(tmp_path, None)
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o600
    first = path.read_text()
    assert coordinator_token_file(tmp_path, None).read_text() == first  # kept across starts
    assert coordinator_token_file(tmp_path, "given-by-the-environment").read_text().strip() \
        == "given-by-the-environment"
    with pytest.raises(ServiceError, match="shorter than"):
        coordinator_token_file(tmp_path, "short")
    monkeypatch.setenv("FEDMERGE_HOME", str(tmp_path))
    assert client_token(None, None) == "given-by-the-environment"  # this machine's coordinator
    assert client_token("from-env-token-value", None) == "from-env-token-value"
    with pytest.raises(ServiceError, match="--operator-token-file .*no such file"):
        client_token(None, tmp_path / "missing")


def test_flower_cli_credentials_carry_the_token_for_that_address(tmp_path: Path) -> None:
    import yaml

    store_for_flwr_cli(tmp_path, "127.0.0.1:9", "the-operator-token-xyz")
    creds = (tmp_path / "credentials.yaml")
    assert creds.stat().st_mode & 0o777 == 0o600
    keys = yaml.safe_load(creds.read_text())
    assert any("127.0.0.1:9" in k and "access-token" in k for k in keys)


# ---- workers ----------------------------------------------------------------------------


def test_a_live_worker_holds_its_work_dir_a_dead_one_does_not(tmp_path: Path) -> None:
    code = ("import sys, time; from pathlib import Path; "
            "from fedmerge.deploy.lock import WorkDirLock; "
            "held = WorkDirLock(Path(sys.argv[1])); held.acquire(); print('held', flush=True); "
            "time.sleep(60)")
    holder = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)],
                              stdout=subprocess.PIPE, text=True, cwd=REPO,
                              env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(WorkDirBusy, match=f"pid {holder.pid}"):
            WorkDirLock(tmp_path).acquire()
    finally:
        holder.kill()
        holder.wait()
    assert (tmp_path / "worker.lock").read_text().strip() == str(holder.pid)  # stale file
    with WorkDirLock(tmp_path) as lock:  # taken over
        assert lock.path.read_text().strip() == str(os.getpid())


def test_connection_state_is_said_once_per_change(tmp_path: Path) -> None:
    log = tmp_path / "supernode.log"
    log.write_text("an earlier SuperNode's line: SuperNode ID: 1\n")
    said: list[str] = []
    watch = ConnectionWatch(log, "coord:8000", said.append)
    watch.start()
    with log.open("a") as f:
        f.write("INFO : SuperNode ID: 42\nINFO : [RUN 1]\n")
        f.write("WARNING : Connection attempt failed, retrying in 0.44 seconds\n")
        f.write("WARNING : Connection attempt failed, retrying in 1.35 seconds\n")
        f.write("INFO : Connection successful after 34.11 seconds and 9 tr")
    watch.poll()
    with log.open("a") as f:
        f.write("ies.\n")
    watch.poll()
    assert said == [
        "connecting to the coordinator at coord:8000",
        "connected to the coordinator at coord:8000 (node id 42)",
        "coordinator at coord:8000 not reachable or not letting this worker in; retrying "
        "(next try in 0.4 s)",
        "connected to the coordinator at coord:8000 again",
    ]
    assert watch.was_connected


def test_restart_backoff_is_bounded_and_checked(tmp_path: Path) -> None:
    assert [retry_delay(a, 30.0) for a in (1, 2, 3, 4, 5, 6, 9)] == [1, 2, 4, 8, 16, 30, 30]
    base = dict(superlink="h:1", work_dir=tmp_path, partition=(0, 2))
    with pytest.raises(ServiceError, match="--max-retries -1"):
        check_worker_options(WorkerOptions(**base, max_retries=-1))
    with pytest.raises(ServiceError, match="--retry-max-delay 0.5"):
        check_worker_options(WorkerOptions(**base, retry_max_delay=0.5))


def test_tokens_are_not_echoed(tmp_path: Path) -> None:
    from fedmerge.deploy.superlink import TokenError, read_token

    (tmp_path / "t").write_text("tiny-secret")
    with pytest.raises(TokenError) as err:
        read_token(tmp_path / "t")
    assert "tiny-secret" not in str(err.value)


# ---- one run id -----------------------------------------------------------------------


def test_every_command_takes_the_store_id_or_flowers(tmp_path: Path) -> None:
    from coordinator.store import make_session_factory, migrated_engine, repo

    url = f"sqlite:///{tmp_path / 'fedmerge.db'}"
    with migrated_engine(url) as engine, make_session_factory(engine).begin() as s:
        ids = [repo.create_run(s, name=f"r{i}", config={}, mode="global",
                               optimizer="sgd", combiner="mean", num_rounds_planned=1,
                               out_dir=str(tmp_path), flower_run_id=flower)
               for i, flower in enumerate(("16200339118023178332", "7"))]
    runner = CliRunner()
    for ref, expected in (("16200339118023178332", ids[0]), ("7", ids[1]),
                          (ids[0][:8], ids[0])):
        res = runner.invoke(app, ["show", ref, "--out-dir", str(tmp_path)])
        assert res.exit_code == 0, res.output
        assert expected in res.output
    res = runner.invoke(app, ["show", "99", "--out-dir", str(tmp_path)])
    assert res.exit_code != 0 and "no run '99'" in res.output


def test_show_and_export_give_each_rounds_wall_clock_time(tmp_path: Path) -> None:
    import json
    from datetime import UTC, datetime, timedelta

    from coordinator.store import make_session_factory, migrated_engine, repo
    from coordinator.store.records import RoundRecord

    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    url = f"sqlite:///{tmp_path / 'fedmerge.db'}"
    with migrated_engine(url) as engine:
        sessions = make_session_factory(engine)
        with sessions.begin() as s:
            run_id = repo.create_run(s, name="r", config={}, mode="global", optimizer="sgd",
                                     combiner="mean", num_rounds_planned=1,
                                     out_dir=str(tmp_path), flower_run_id="5")
            repo.start_round(s, run_id, 1, t0)
        with sessions.begin() as s:
            repo.commit_round(s, run_id, RoundRecord(
                number=1, started_at=t0, finished_at=t0 + timedelta(seconds=12.5), send_s=0.1,
                wait_s=9.0, merge_s=0.01, evaluate_s=3.0, metrics={}, checkpoint_path=None,
                checkpoint_sha256=None, updates=(), evaluations=()))
    res = CliRunner().invoke(app, ["show", "latest", "--out-dir", str(tmp_path)])
    assert res.exit_code == 0, res.output
    assert "12.50" in res.output  # the "round s" column (rich may wrap its header)
    res = CliRunner().invoke(app, ["export", "5", "--out-dir", str(tmp_path), "--to",
                                   str(tmp_path / "x")])
    assert res.exit_code == 0, res.output
    (history,) = (tmp_path / "x").glob("*-history.json")
    assert json.loads(history.read_text())["rounds"][0]["round_s"] == 12.5


def test_submit_says_when_a_run_is_active_and_queue_waits_for_it(tmp_path: Path) -> None:
    from fedmerge.deploy.submit import RunStatus, SubmitOptions, _wait_for_turn

    class Watcher:
        def __init__(self, busy_for: int) -> None:
            self.calls, self.busy_for = 0, busy_for

        def active_runs(self) -> dict[int, RunStatus]:
            self.calls += 1
            return {11: RunStatus("running", "", "")} if self.calls <= self.busy_for else {}

    said: list[str] = []
    _wait_for_turn(Watcher(5), SubmitOptions(app=tmp_path, connection="c"), said.append)
    assert len(said) == 1 and "another run is active" in said[0] and "11 (running)" in said[0]
    said.clear()
    watcher = Watcher(3)
    _wait_for_turn(watcher, SubmitOptions(app=tmp_path, connection="c", queue=True, poll=0.01),
                   said.append)
    assert watcher.calls == 4  # asked until no run was active
    assert said == ["queued: waiting for 11 (running) to end", "the coordinator is free: starting"]
