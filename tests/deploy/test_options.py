"""The services' options, command lines and connection files, without starting anything."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from flwr.common.config import parse_config_args
from typer.testing import CliRunner

from fedmerge.certs import make_certs
from fedmerge.cli import app
from fedmerge.deploy.procs import DEPLOY_ENV, ServiceError, split_address
from fedmerge.deploy.service import (
    CoordinatorOptions,
    TlsFiles,
    check_options,
    serverapp_executor_argv,
    superlink_argv,
)
from fedmerge.deploy.submit import RunStatus, write_connection
from fedmerge.deploy.worker import WorkerOptions, device_env, node_config, supernode_argv


def test_deploy_env_turns_off_runtime_installs_and_keeps_ray_on_loopback() -> None:
    assert DEPLOY_ENV["FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION"] == "1"
    assert DEPLOY_ENV["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] == "0"


def test_coordinator_needs_certificates_or_an_explicit_insecure(tmp_path: Path) -> None:
    with pytest.raises(ServiceError, match="--certs DIR.*--insecure"):
        check_options(CoordinatorOptions(out_dir=tmp_path))
    assert check_options(CoordinatorOptions(out_dir=tmp_path, insecure=True)) == []
    (loud,) = check_options(CoordinatorOptions(out_dir=tmp_path, host="0.0.0.0", insecure=True))
    assert "INSECURE" in loud and "0.0.0.0:8000" in loud
    with pytest.raises(ServiceError, match="TLS file"):
        check_options(CoordinatorOptions(out_dir=tmp_path, tls=TlsFiles.from_dir(tmp_path)))
    with pytest.raises(ServiceError, match="needs --dashboard-token"):
        check_options(CoordinatorOptions(out_dir=tmp_path, insecure=True,
                                         dashboard_host="0.0.0.0"))
    with pytest.raises(ServiceError, match="--register-key needs TLS"):
        check_options(CoordinatorOptions(out_dir=tmp_path, insecure=True,
                                         register_keys=(tmp_path / "k.pub",)))


def test_superlink_command_line(tmp_path: Path) -> None:
    make_certs(tmp_path / "c", nodes=0)
    tls = CoordinatorOptions(out_dir=tmp_path, tls=TlsFiles.from_dir(tmp_path / "c"), port=9)
    argv = superlink_argv(tls)
    assert argv[argv.index("--port") + 1] == "9" and argv[argv.index("--host") + 1] == "127.0.0.1"
    assert "--enable-supernode-auth" in argv and "--insecure" not in argv
    assert argv[argv.index("--ssl-ca-certfile") + 1].endswith("ca.pem")
    assert argv[argv.index("--database") + 1] == str(tmp_path / "superlink" / "state.db")
    assert "--disable-runtime-dependency-installation" in argv
    plain = superlink_argv(CoordinatorOptions(out_dir=tmp_path, insecure=True))
    assert "--insecure" in plain and "--enable-supernode-auth" not in plain


def test_the_serverapp_runs_warm_unless_asked_otherwise(tmp_path: Path) -> None:
    """Warm: the SuperLink in process isolation with the shared secret, and the executor
    asks it for ServerApp tasks on loopback with the same secret (and the CA under TLS)."""
    make_certs(tmp_path / "c", nodes=0)
    tls = CoordinatorOptions(out_dir=tmp_path, tls=TlsFiles.from_dir(tmp_path / "c"), port=9)
    secret = str(tmp_path / "superlink" / "superexec.secret")
    argv = superlink_argv(tls)
    assert argv[argv.index("--isolation") + 1] == "process"
    assert argv[argv.index("--superexec-auth-secret-file") + 1] == secret
    executor = serverapp_executor_argv(tls)
    assert executor[executor.index("--task-type") + 1] == "serverapp"
    assert executor[executor.index("--runtime-api-address") + 1] == "127.0.0.1:9"
    assert executor[executor.index("--superexec-auth-secret-file") + 1] == secret
    assert executor[executor.index("--root-certificates") + 1].endswith("ca.pem")
    assert "--insecure" not in executor
    plain = CoordinatorOptions(out_dir=tmp_path, insecure=True, host="0.0.0.0")
    assert "--insecure" in serverapp_executor_argv(plain)
    assert "127.0.0.1:8000" in serverapp_executor_argv(plain)
    flower = superlink_argv(CoordinatorOptions(out_dir=tmp_path, insecure=True,
                                               isolation="subprocess"))
    assert "--isolation" not in flower and "--superexec-auth-secret-file" not in flower


def test_worker_node_config_parses_as_flower_reads_it(tmp_path: Path) -> None:
    base = WorkerOptions(superlink="h:1", work_dir=tmp_path, partition=(1, 4))
    assert parse_config_args([node_config(base)]) == {"partition-id": 1, "num-partitions": 4}
    own = WorkerOptions(superlink="h:1", work_dir=tmp_path, data_dir=tmp_path / "my data",
                        train_tensors="fc2", threads=3, extra_node_config=("partition-id=3",))
    assert parse_config_args([node_config(own)]) == {
        "data-dir": str((tmp_path / "my data").resolve()), "train-tensors": "fc2",
        "threads": 3, "partition-id": 3,
    }
    for bad in (WorkerOptions(superlink="h:1", work_dir=tmp_path),
                WorkerOptions(superlink="h:1", work_dir=tmp_path, partition=(4, 4)),
                WorkerOptions(superlink="h:1", work_dir=tmp_path, partition=(0, 4),
                              threads=-1)):
        with pytest.raises(ServiceError):
            node_config(bad)


def test_worker_device_and_security_flags(tmp_path: Path) -> None:
    assert device_env("cpu") == {"CUDA_VISIBLE_DEVICES": ""}
    assert device_env("cuda:1") == {"CUDA_VISIBLE_DEVICES": "1"}
    assert device_env("auto") == {}
    with pytest.raises(ServiceError):
        device_env("gpu0")
    opts = WorkerOptions(superlink="h:1", work_dir=tmp_path, partition=(0, 2),
                         root_cert=Path("ca.pem"), auth_key=Path("n.key"))
    argv = supernode_argv(opts, 5000, tmp_path / "s")
    assert argv[argv.index("--isolation") + 1] == "process"
    assert argv[argv.index("--root-certificates") + 1] == "ca.pem"
    assert argv[argv.index("--auth-supernode-private-key") + 1] == "n.key"
    assert argv[argv.index("--port") + 1] == "5000" and "--insecure" not in argv
    with pytest.raises(ServiceError, match="--insecure excludes"):
        supernode_argv(WorkerOptions(superlink="h:1", work_dir=tmp_path, partition=(0, 2),
                                     insecure=True, auth_key=Path("n.key")), 5000, None)


def test_connection_is_written_where_flower_reads_it(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from flwr.cli.flower_config import read_superlink_connection

    monkeypatch.setenv("FLWR_HOME", str(tmp_path))
    (tmp_path / "config.toml").write_text('[superlink]\ndefault = "local"\n\n'
                                          '[superlink.local]\naddress = ":local:"\n')
    write_connection("prod", address="coord.lan:8000", root_cert=tmp_path / "ca.pem")
    write_connection("dev", address="127.0.0.1:8000", insecure=True)
    prod = read_superlink_connection("prod")
    assert prod.address == "coord.lan:8000"
    assert prod.root_certificates == str(tmp_path / "ca.pem") and not prod.insecure
    assert read_superlink_connection("dev").insecure
    assert read_superlink_connection(None).address == ":local:"  # the default stays
    with pytest.raises(ServiceError):
        write_connection("x", address="h:1")


def test_small_helpers() -> None:
    assert split_address("[::1]:8000") == ("::1", 8000)
    with pytest.raises(ValueError):
        split_address("coord.lan")
    assert str(RunStatus("finished", "failed", "ServerApp raised")) == (
        "finished:failed (ServerApp raised)")


def test_commands_refuse_contradictions_before_starting_anything(tmp_path: Path) -> None:
    out = CliRunner().invoke(app, ["coordinator", "--out-dir", str(tmp_path)])
    assert out.exit_code == 2 and "--insecure" in out.output
    assert not (tmp_path / "superlink").exists()
    out = CliRunner().invoke(app, ["worker", "--coordinator", "h:1", "--insecure",
                                   "--work-dir", str(tmp_path / "w")])
    assert out.exit_code == 2 and "--partition" in out.output
    out = CliRunner().invoke(app, ["worker", "--coordinator", "h:1", "--partition", "1-2"])
    assert out.exit_code == 2


def test_warm_executor_preload_forgets_the_apps_own_modules() -> None:
    code = (
        "import sys; from fedmerge.deploy.warm_executor import preload; "
        "preload(['client.task', 'json']); "
        "left = [m for m in sys.modules if m.split('.')[0] in ('client', 'coordinator')]; "
        "assert not left, left; assert 'json' in sys.modules; print('ok')"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert done.stdout.strip() == "ok", done.stderr


def test_a_cuda_worker_without_a_gpu_fails_at_start() -> None:
    from fedmerge.deploy.procs import child_env
    from fedmerge.deploy.worker import check_device

    with pytest.raises(ServiceError, match="torch sees no CUDA device"):
        check_device("cuda:0", child_env({"CUDA_VISIBLE_DEVICES": ""}))


def test_worker_runs_flowers_supernode_with_its_sleeps_capped(tmp_path: Path) -> None:
    opts = WorkerOptions(superlink="h:1", work_dir=tmp_path, partition=(0, 2),
                         poll_interval=0.3)
    argv = supernode_argv(opts, 5000, None)
    assert argv[1:5] == ["-m", "fedmerge.deploy.supernode", "--poll-interval", "0.3"]
    assert argv[argv.index("--idle-poll-interval") + 1] == "1.0"
    assert argv.index("--idle-poll-interval") < argv.index("--") < argv.index("--superlink")
    assert argv[argv.index("--superlink") + 1] == "h:1"
    with pytest.raises(ServiceError, match="--poll-interval"):
        supernode_argv(WorkerOptions(superlink="h:1", work_dir=tmp_path, partition=(0, 2),
                                     poll_interval=0.0), 5000, None)


def test_capped_sleep_patches_the_supernode_loop_only(monkeypatch: pytest.MonkeyPatch) -> None:
    import time

    from flwr.supernode import start_client_internal as loop

    from fedmerge.deploy import supernode

    monkeypatch.setattr(loop, "time", time)  # restored after the test
    slept: list[float] = []
    monkeypatch.setattr(time, "sleep", slept.append)
    assert supernode.cap_supernode_sleeps(0.2)
    loop.time.sleep(3)  # Flower's idle wait
    loop.time.sleep(0.1)
    assert slept == [0.2, 0.1]
    assert loop.time.time is time.time and loop.time.monotonic is time.monotonic
    time.sleep(5)  # the time module itself is untouched: no cap elsewhere
    assert slept[-1] == 5

    slept.clear()
    monkeypatch.setattr(loop, "time", time)
    assert supernode.cap_supernode_sleeps(0.2, idle_cap=1.0, active_window=0.0)
    for _ in range(6):  # no message for a while: backs off to the idle cap
        loop.time.sleep(3)
    loop.time.sleep(0.5)  # waiting for a reply: activity
    loop.time.sleep(3)
    assert slept == pytest.approx([0.2, 0.3, 0.45, 0.675, 1.0, 1.0, 0.2, 0.2])

    monkeypatch.setattr(loop, "time", object())  # a Flower whose loop changed
    with pytest.warns(UserWarning, match="keeping its own poll interval"):
        assert not supernode.cap_supernode_sleeps(0.2)


def test_object_pulls_retry_a_missing_object_after_a_short_wait(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A task's first pull of its message's objects often finds one not yet on the
    SuperNode; Flower waits a second before the retry, the patched pull 0.02 s."""
    from flwr.supercore.inflatable import inflatable_utils as pulls
    from flwr.supercore.inflatable.inflatable_utils import ObjectUnavailableError

    from fedmerge.deploy.object_pulls import INITIAL_BACKOFF_S, shorten_object_pull_backoff

    for f in (pulls.pull_objects, pulls.pull_and_inflate_object_from_tree):
        monkeypatch.setattr(f, "__kwdefaults__", dict(f.__kwdefaults__))  # restored after
    assert pulls.pull_objects.__kwdefaults__["initial_backoff"] == 1  # Flower's own
    assert shorten_object_pull_backoff()

    waits: list[float] = []  # the backoff's timed waits (the pool's own waits have none)
    real_wait = pulls.threading.Event.wait

    def wait(self: object, timeout: float | None = None) -> bool:
        if timeout is None:
            return real_wait(self, None)
        waits.append(timeout)
        return real_wait(self, 0)

    monkeypatch.setattr(pulls.threading.Event, "wait", wait)
    missing = {"b"}

    def pull(object_id: str) -> bytes:
        if object_id in missing:
            missing.discard(object_id)
            raise ObjectUnavailableError(object_id)
        return object_id.encode()

    assert pulls.pull_objects(["a", "b"], pull) == {"a": b"a", "b": b"b"}
    assert waits and max(waits) <= INITIAL_BACKOFF_S * 1.2  # +-20% jitter
    assert pulls.pull_and_inflate_object_from_tree.__kwdefaults__["initial_backoff"] == (
        INITIAL_BACKOFF_S)

    monkeypatch.setattr(pulls.pull_objects, "__kwdefaults__", {"max_time": 1})
    with pytest.warns(UserWarning, match="keeping their own retry backoff"):
        assert not shorten_object_pull_backoff()


def test_the_fab_carries_what_the_apps_read_and_leaves_the_rest_out() -> None:
    """A deployment worker runs the FAB's copy of client/, so a file the apps read at run
    time must be one Flower packages; the CLI and the dashboard are never loaded from it."""
    import io
    import zipfile

    from flwr.cli.build import build_fab_from_disk

    from client.tasks.tiny_lm import PRETRAIN_TEXT

    root = Path(__file__).resolve().parents[2]
    names = set(zipfile.ZipFile(io.BytesIO(build_fab_from_disk(root))).namelist())
    assert PRETRAIN_TEXT.relative_to(root).as_posix() in names
    assert {"client/client_app.py", "coordinator/server_app.py", "pyproject.toml"} <= names
    assert not {n for n in names if n.split("/")[0] in ("fedmerge", "dashboard", "tests")}


def test_a_node_does_not_back_off_within_the_active_window() -> None:
    """Between a run's rounds (a message less than active_window seconds ago) the node
    polls every cap seconds; once the window has passed it backs off as before."""
    import time

    from fedmerge.deploy.supernode import CappedSleep

    now = [100.0]
    slept: list[float] = []
    capped = CappedSleep(0.2, 1.0, active_window=10.0, clock=lambda: now[0])
    real_sleep, time.sleep = time.sleep, slept.append
    try:
        capped.sleep(3)  # never active yet: an idle worker backs off at once
        capped.sleep(0.5)  # a message: waiting for the ClientApp's reply
        for _ in range(4):  # the next round within the window
            now[0] += 2.0
            capped.sleep(3)
        now[0] += 10.0  # the run is over
        capped.sleep(3)
        capped.sleep(3)
    finally:
        time.sleep = real_sleep
    assert slept == pytest.approx([0.2, 0.2, 0.2, 0.2, 0.2, 0.2, 0.2, 0.3])
