"""``fedmerge worker``: a Flower SuperNode on a worker machine, with the ClientApp beside it.

The SuperNode connects to the coordinator's SuperLink (TLS with the CA's root certificate,
and the node's private key when SuperNode authentication is on). Its node config says
which data it trains on: a partition of the run's dataset (``partition-id`` /
``num-partitions``) or its own files (``data-dir``, client/local_data.py).

Isolation ``warm`` (the default) starts the SuperNode with Flower's ``--isolation process``
and the warm executor (fedmerge/deploy/warm_executor.py) as the long-running ClientApp
process beside it; ``subprocess`` is Flower's default, a fresh ``flwr-clientapp`` per
message. The device is chosen with CUDA_VISIBLE_DEVICES, which every ClientApp process
inherits: ``cpu`` hides the GPUs, ``cuda:N`` shows only GPU N (the trainer's ``auto`` then
takes it), ``auto`` leaves the environment alone.

The worker holds its work dir (fedmerge/deploy/lock.py), says its connection state on
its terminal (fedmerge/deploy/connection.py), and starts the SuperNode again, with a
bounded exponential backoff, when it ends for want of a coordinator: one that is not up
yet, restarts, or has not registered this worker's key yet (Flower exits 305 then). The
warm executor outlives those restarts (its parent is the worker, not the SuperNode).
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from fedmerge.deploy.connection import ConnectionWatch
from fedmerge.deploy.lock import WorkDirBusy, WorkDirLock
from fedmerge.deploy.procs import (
    Echo,
    ServiceError,
    Stopped,
    Supervisor,
    child_env,
    describe_exit,
    flwr_exit_code,
    free_port,
    ignore_stop_signals,
    raise_on_stop_signals,
)
from fedmerge.deploy.supernode import DEFAULT_IDLE_POLL_S, DEFAULT_POLL_S

Isolation = Literal["warm", "subprocess"]


@dataclass(frozen=True)
class WorkerOptions:
    superlink: str  # HOST:PORT of the coordinator
    work_dir: Path  # Flower home (FAB installs), logs, the executor's secret
    data_dir: Path | None = None
    partition: tuple[int, int] | None = None  # (partition-id, num-partitions)
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    train_tensors: str = ""
    threads: int = 0  # torch threads per task; 0: automatic (client/threads.py)
    root_cert: Path | None = None
    auth_key: Path | None = None
    insecure: bool = False
    isolation: Isolation = "warm"
    runtime_port: int | None = None  # the SuperNode's local Runtime API; None: a free one
    poll_interval: float = DEFAULT_POLL_S  # the SuperNode loop's longest sleep (Flower: 3 s)
    idle_poll_interval: float = DEFAULT_IDLE_POLL_S  # ... backed off to while no message comes
    extra_node_config: tuple[str, ...] = ()  # more key=value pairs, TOML values
    task: str = "digits"  # the task whose format data_dir is checked against at start
    task_config: str = ""
    max_retries: int | None = None  # SuperNode restarts in a row without connecting; None: no end
    retry_max_delay: float = 30.0  # the backoff's longest wait, seconds


RETRY_FIRST_DELAY = 1.0
CONNECTION_LOST = 305  # Flower's SUPERNODE_CONNECTION_ERROR: activation refused or failed


def retry_delay(attempt: int, max_delay: float) -> float:
    """Seconds before restart ``attempt`` (1, 2, ...): 1, 2, 4, ... capped at max_delay."""
    return min(max_delay, RETRY_FIRST_DELAY * 2 ** (attempt - 1))


def node_config(opts: WorkerOptions) -> str:
    """The SuperNode's ``--node-config``: space-separated key=value, values in TOML."""
    if (opts.data_dir is None) == (opts.partition is None):
        raise ServiceError("give exactly one of --data DIR and --partition I/N")
    pairs: list[str] = []
    if opts.partition is not None:
        pid, num = opts.partition
        if not 0 <= pid < num:
            raise ServiceError(f"--partition {pid}/{num}: need 0 <= I < N")
        pairs += [f"partition-id={pid}", f"num-partitions={num}"]
    if opts.data_dir is not None:
        pairs.append(f"data-dir={json.dumps(str(opts.data_dir.expanduser().resolve()))}")
    if opts.train_tensors:
        pairs.append(f"train-tensors={json.dumps(opts.train_tensors)}")
    if opts.threads < 0:
        raise ServiceError(f"--threads {opts.threads}: need >= 0 (0: automatic)")
    if opts.threads:
        pairs.append(f"threads={opts.threads}")
    return " ".join([*pairs, *opts.extra_node_config])


def device_env(device: str) -> dict[str, str]:
    if device == "cpu":
        return {"CUDA_VISIBLE_DEVICES": ""}
    if device.startswith("cuda:"):
        index = device.removeprefix("cuda:")
        if not index.isdigit():
            raise ServiceError(f"--device {device}: expected cuda:N with N a GPU index")
        return {"CUDA_VISIBLE_DEVICES": index}
    if device in ("auto", "cuda"):
        return {}
    raise ServiceError(f"--device {device}: expected auto, cpu, cuda or cuda:N")


def check_device(device: str, env: dict[str, str], *, timeout: float = 120.0) -> int:
    """GPUs torch sees under ``env``; ServiceError if a cuda device was asked for and
    there is none (checked in a child: this process must not initialise CUDA)."""
    code = "import torch; print(torch.cuda.device_count())"
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          text=True, timeout=timeout)
    if done.returncode != 0:
        raise ServiceError(f"torch does not import on this worker:\n{done.stderr.strip()}")
    count = int(done.stdout.strip().splitlines()[-1])
    if device.startswith("cuda") and count == 0:
        shown = env.get("CUDA_VISIBLE_DEVICES", "(unset)")
        raise ServiceError(f"--device {device}: torch sees no CUDA device "
                           f"(CUDA_VISIBLE_DEVICES={shown})")
    return count


def check_worker_options(opts: WorkerOptions) -> str:
    """The SuperNode's node config; ServiceError for options that cannot work together
    (checked before anything slow starts)."""
    if opts.poll_interval <= 0:
        raise ServiceError(f"--poll-interval {opts.poll_interval}: must be > 0")
    if opts.idle_poll_interval < opts.poll_interval:
        raise ServiceError(f"--idle-poll-interval {opts.idle_poll_interval}: must be >= "
                           f"--poll-interval {opts.poll_interval}")
    if opts.max_retries is not None and opts.max_retries < 0:
        raise ServiceError(f"--max-retries {opts.max_retries}: must be >= 0")
    if opts.retry_max_delay < RETRY_FIRST_DELAY:
        raise ServiceError(f"--retry-max-delay {opts.retry_max_delay}: must be >= "
                           f"{RETRY_FIRST_DELAY}")
    if opts.insecure and (opts.root_cert or opts.auth_key):
        raise ServiceError("--insecure excludes --root-cert and --auth-key")
    device_env(opts.device)  # raises for a device it cannot mean
    return node_config(opts)


def supernode_argv(opts: WorkerOptions, runtime_port: int, secret: Path | None) -> list[str]:
    config = check_worker_options(opts)
    argv = [  # Flower's SuperNode, its loop's sleeps capped (fedmerge/deploy/supernode.py)
        sys.executable, "-m", "fedmerge.deploy.supernode",
        "--poll-interval", str(opts.poll_interval), "--idle-poll-interval",
        str(opts.idle_poll_interval), "--", "--superlink", opts.superlink,
        "--host", "127.0.0.1", "--port", str(runtime_port),
        "--node-config", config,
        "--isolation", "process" if opts.isolation == "warm" else "subprocess",
    ]
    if opts.insecure:
        argv.append("--insecure")
    elif opts.root_cert is not None:  # else: TLS against the system's CA store
        argv += ["--root-certificates", str(opts.root_cert)]
    if opts.auth_key is not None:
        argv += ["--auth-supernode-private-key", str(opts.auth_key)]
    if secret is not None:
        argv += ["--superexec-auth-secret-file", str(secret)]
    return argv


def executor_argv(runtime_port: int, parent_pid: int, secret: Path) -> list[str]:
    return [
        sys.executable, "-m", "fedmerge.deploy.warm_executor",
        "--runtime-api-address", f"127.0.0.1:{runtime_port}", "--insecure",
        "--parent-pid", str(parent_pid), "--superexec-auth-secret-file", str(secret),
    ]


def _secret_file(work_dir: Path) -> Path:
    """A fresh shared secret for the SuperNode's task hand-out to the executor (0600)."""
    path = work_dir / "superexec.secret"
    path.unlink(missing_ok=True)
    path.touch(mode=0o600)
    path.write_bytes(secrets.token_bytes(32))
    return path


def run_worker(opts: WorkerOptions, *, echo: Echo = print) -> int:
    """Run until SIGTERM/SIGINT (returns 0), until the executor ends, or until the SuperNode
    ends for a reason a restart cannot fix or more than ``max_retries`` times in a row
    without connecting (returns 1, with the reason)."""
    config = check_worker_options(opts)
    for path in (opts.root_cert, opts.auth_key):
        if path is not None and not path.is_file():
            raise ServiceError(f"file not found: {path}")
    if opts.data_dir is not None:
        from client.local_data import check_data_dir

        data = check_data_dir(opts.data_dir, opts.task, opts.task_config)
        echo(f"data: {opts.data_dir} ({len(data.train)} train, {len(data.val)} val)")
    lock = WorkDirLock(opts.work_dir)
    try:
        lock.acquire()
    except WorkDirBusy as exc:
        raise ServiceError(str(exc)) from None
    try:
        return _run_locked(opts, config, echo)
    finally:
        lock.release()


def _run_locked(opts: WorkerOptions, config: str, echo: Echo) -> int:
    env = child_env({"FLWR_HOME": str(opts.work_dir / "flwr"), **device_env(opts.device)})
    if opts.device.startswith("cuda"):
        echo(f"device {opts.device}: torch sees {check_device(opts.device, env)} CUDA device(s)")
    runtime_port = opts.runtime_port or free_port()
    secret = _secret_file(opts.work_dir) if opts.isolation == "warm" else None
    supervisor = Supervisor(opts.work_dir / "logs")
    raise_on_stop_signals()
    try:
        executor = None
        if secret is not None:  # it outlives SuperNode restarts: its parent is this process
            executor = supervisor.start("executor", executor_argv(runtime_port, os.getpid(),
                                                                  secret),
                                        env=env, cwd=opts.work_dir)
        echo(f"worker: {config}, isolation {opts.isolation}, logs in {supervisor.log_dir}")
        failures = 0
        while True:
            node = supervisor.start("supernode", supernode_argv(opts, runtime_port, secret),
                                    env=env, cwd=opts.work_dir)
            watch = ConnectionWatch(node.log_path, opts.superlink, echo)  # type: ignore[arg-type]
            watch.start()
            ended = supervisor.supervise(poll=0.25, tick=watch.poll)
            watch.poll()
            if ended is executor:
                echo(describe_exit(ended))
                return 1
            code = flwr_exit_code(ended)
            if code != CONNECTION_LOST and not watch.was_connected:
                echo(describe_exit(ended))  # bad arguments, a bad key...: a restart won't help
                return 1
            failures = 0 if watch.was_connected else failures + 1
            if opts.max_retries is not None and failures > opts.max_retries:
                echo(describe_exit(ended) + f"\ngiving up after {failures} tries "
                     f"(--max-retries {opts.max_retries})")
                return 1
            delay = retry_delay(max(failures, 1), opts.retry_max_delay)
            why = "lost the coordinator" if watch.was_connected else _short_reason(ended)
            echo(f"SuperNode ended ({why}); retrying in {delay:.0f} s")
            supervisor.forget(ended)
            time.sleep(delay)
    except Stopped as sig:
        echo(f"{sig}: stopping")
        return 0
    finally:
        ignore_stop_signals()
        supervisor.stop()


def _short_reason(child) -> str:  # noqa: ANN001 - a procs.Child
    from fedmerge.deploy.procs import EXIT_HINTS

    return EXIT_HINTS.get(flwr_exit_code(child) or 0, f"exit code {child.popen.returncode}")
