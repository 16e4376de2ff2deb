"""``fedmerge worker``: a Flower SuperNode on a worker machine, with the ClientApp beside it.

The SuperNode connects to the coordinator's SuperLink (TLS with the CA's root certificate,
and the node's private key when SuperNode authentication is on). Its node config says
which data it trains on: a partition of the run's dataset (``partition-id`` /
``num-partitions``) or its own files (``data-dir``, client/local_data.py).

Isolation ``warm`` (the default) starts the SuperNode with Flower's ``--isolation process``
and the warm executor (coordinator/deploy/warm_executor.py) as the long-running ClientApp
process beside it; ``subprocess`` is Flower's default, a fresh ``flwr-clientapp`` per
message. The device is chosen with CUDA_VISIBLE_DEVICES, which every ClientApp process
inherits: ``cpu`` hides the GPUs, ``cuda:N`` shows only GPU N (the trainer's ``auto`` then
takes it), ``auto`` leaves the environment alone.
"""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from coordinator.deploy.procs import (
    Echo,
    ServiceError,
    Supervisor,
    child_env,
    free_port,
    run_supervised,
)
from coordinator.deploy.supernode import DEFAULT_POLL_S

Isolation = Literal["warm", "subprocess"]


@dataclass(frozen=True)
class WorkerOptions:
    superlink: str  # HOST:PORT of the coordinator
    work_dir: Path  # Flower home (FAB installs), logs, the executor's secret
    data_dir: Path | None = None
    partition: tuple[int, int] | None = None  # (partition-id, num-partitions)
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    train_tensors: str = ""
    root_cert: Path | None = None
    auth_key: Path | None = None
    insecure: bool = False
    isolation: Isolation = "warm"
    runtime_port: int | None = None  # the SuperNode's local Runtime API; None: a free one
    poll_interval: float = DEFAULT_POLL_S  # the SuperNode loop's longest sleep (Flower: 3 s)
    extra_node_config: tuple[str, ...] = ()  # more key=value pairs, TOML values
    task: str = "digits"  # the task whose format data_dir is checked against at start
    task_config: str = ""


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
    if opts.insecure and (opts.root_cert or opts.auth_key):
        raise ServiceError("--insecure excludes --root-cert and --auth-key")
    device_env(opts.device)  # raises for a device it cannot mean
    return node_config(opts)


def supernode_argv(opts: WorkerOptions, runtime_port: int, secret: Path | None) -> list[str]:
    config = check_worker_options(opts)
    argv = [  # Flower's SuperNode, its loop's sleeps capped (coordinator/deploy/supernode.py)
        sys.executable, "-m", "coordinator.deploy.supernode",
        "--poll-interval", str(opts.poll_interval), "--", "--superlink", opts.superlink,
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


def executor_argv(runtime_port: int, supernode_pid: int, secret: Path) -> list[str]:
    return [
        sys.executable, "-m", "coordinator.deploy.warm_executor",
        "--runtime-api-address", f"127.0.0.1:{runtime_port}", "--insecure",
        "--parent-pid", str(supernode_pid), "--superexec-auth-secret-file", str(secret),
    ]


def _secret_file(work_dir: Path) -> Path:
    """A fresh shared secret for the SuperNode's task hand-out to the executor (0600)."""
    path = work_dir / "superexec.secret"
    path.unlink(missing_ok=True)
    path.touch(mode=0o600)
    path.write_bytes(secrets.token_bytes(32))
    return path


def run_worker(opts: WorkerOptions, *, echo: Echo = print,
               startup_timeout: float = 120.0) -> int:
    """Run until SIGTERM/SIGINT (returns 0) or until the SuperNode or the executor ends
    (returns 1, with the reason)."""
    config = check_worker_options(opts)
    for path in (opts.root_cert, opts.auth_key):
        if path is not None and not path.is_file():
            raise ServiceError(f"file not found: {path}")
    if opts.data_dir is not None:
        from client.local_data import check_data_dir

        data = check_data_dir(opts.data_dir, opts.task, opts.task_config)
        echo(f"data: {opts.data_dir} ({len(data.train)} train, {len(data.val)} val)")
    opts.work_dir.mkdir(parents=True, exist_ok=True)
    env = child_env({"FLWR_HOME": str(opts.work_dir / "flwr"), **device_env(opts.device)})
    if opts.device.startswith("cuda"):
        echo(f"device {opts.device}: torch sees {check_device(opts.device, env)} CUDA device(s)")

    runtime_port = opts.runtime_port or free_port()
    secret = _secret_file(opts.work_dir) if opts.isolation == "warm" else None
    supervisor = Supervisor(opts.work_dir / "logs")

    def start() -> None:
        node = supervisor.start("supernode", supernode_argv(opts, runtime_port, secret),
                                env=env, cwd=opts.work_dir)
        supervisor.wait_port(node, "127.0.0.1", runtime_port, timeout=startup_timeout)
        if secret is not None:
            supervisor.start("executor", executor_argv(runtime_port, node.pid, secret),
                             env=env, cwd=opts.work_dir)
        echo(f"SuperNode pid {node.pid} -> {opts.superlink} ({config}), isolation "
             f"{opts.isolation}, logs in {supervisor.log_dir}")

    return run_supervised(supervisor, start, echo=echo)
