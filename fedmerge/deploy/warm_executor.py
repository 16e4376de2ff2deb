"""A warm ClientApp executor for a SuperNode started with ``--isolation process``.

Flower 1.42's SuperExec starts a fresh ``flwr-clientapp`` process for every message, and
that process imports torch (and torch._dynamo at the first optimizer step), scikit-learn
and flwr-datasets again: 8-10 s of CPU per message, two messages per round and node.
This executor is the long-running process beside the SuperNode that process isolation
allows: it imports those libraries once, then for each task it acquires from the
SuperNode's Runtime API it forks a child that runs Flower's own ``run_clientapp`` (what
``flwr-clientapp`` runs: the ClientApp is loaded from the run's FAB, its Context comes from
the SuperNode, its reply goes back through the SuperNode). The app's own packages are
dropped from ``sys.modules`` after the preload, so each task runs the code of its FAB, not
the code installed on the worker.

    python -m fedmerge.deploy.warm_executor --runtime-api-address 127.0.0.1:9094 \
        --insecure --parent-pid <worker pid> [--superexec-auth-secret-file F]

POSIX only (os.fork). The parent never runs a torch op or touches CUDA, so each child
initialises both itself.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import logging
import os
import signal
import sys
import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from fedmerge.deploy.object_pulls import shorten_object_pull_backoff

DEFAULT_PRELOAD = (
    "client.client_app", "flwr_datasets.partitioner", "sklearn.datasets", "torch._dynamo",
)
# The ServerApp (``--task-type serverapp``, beside a SuperLink started with --isolation
# process): the coordinator's round loop, its store and the central evaluation's task
SERVERAPP_PRELOAD = (
    "coordinator.server_app", "client.tasks.registry", "sklearn.datasets", "torch._dynamo",
)
TASK_TYPES = ("clientapp", "serverapp")
APP_PACKAGES = ("aggregation", "client", "coordinator", "dashboard")  # loaded from the FAB
ACQUIRE_METHOD = "/flwr.proto.Runtime/AcquireTask"
log = logging.getLogger("fedmerge.warm_executor")


def preload(modules: Sequence[str], *, app_packages: Sequence[str] = APP_PACKAGES) -> None:
    """Import ``modules`` (and so their dependencies), then forget the app's own modules."""
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError as exc:
            log.warning("preload of %s failed (%s); tasks will import it", name, exc)
    for name in [m for m in sys.modules if m.split(".")[0] in app_packages]:
        del sys.modules[name]  # this running module keeps its own globals


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _run_child(address: str, token: str, *, insecure: bool, root_cert: bytes | None) -> None:
    """In the forked child: Flower's ClientApp runner, then leave without running the
    parent's atexit handlers."""
    code = 1
    try:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        from flwr.supernode.runtime.run_clientapp import run_clientapp

        run_clientapp(
            runtime_api_address=address, token=token, insecure=insecure,
            certificates=root_cert, parent_pid=None, runtime_dependency_install=False,
        )
        code = 0
    except SystemExit as exc:  # flwr_exit ends every task this way
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:  # noqa: BLE001 - report it, then leave the child
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _run_server_child(address: str, token: str, *, insecure: bool,
                      root_cert: bytes | None) -> None:
    """In the forked child: Flower's ServerApp runner (what ``flwr-serverapp`` runs, its
    output mirrored to the run's log as there), then leave."""
    code = 1
    try:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        from queue import Queue

        from flwr.supercore.logger import mirror_output_to_queue, restore_output
        from flwr.superlink.runtime import run_serverapp

        log_queue: Queue[str | None] = Queue()
        mirror_output_to_queue(log_queue)
        run_serverapp(runtime_api_address=address, log_queue=log_queue, token=token,
                      insecure=insecure, certificates=root_cert, parent_pid=None,
                      runtime_dependency_install=False)
        restore_output()
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:  # noqa: BLE001
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


class _Children:
    """The running tasks (pid -> (task, run, start)), so SIGTERM takes them down with the
    executor."""

    def __init__(self) -> None:
        self.running: dict[int, tuple[int, int, float]] = {}

    def terminate(self, signum: int, _frame: FrameType | None) -> None:
        for pid in self.running:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        raise SystemExit(128 + signum)

    def reap(self, *, block: bool) -> int:
        """Log each task that ended (waiting for one if ``block``); how many ended."""
        ended = 0
        while self.running:
            pid, status = os.waitpid(-1, 0 if block and not ended else os.WNOHANG)
            if pid == 0:
                break
            if pid not in self.running:
                continue
            task, run, started = self.running.pop(pid)
            ended += 1
            log.info("task %s of run %s: %.2f s, exit code %s", task, run,
                     time.perf_counter() - started, os.waitstatus_to_exitcode(status))
        return ended


def serve(
    runtime_api_address: str,
    *,
    insecure: bool,
    root_certificates: str | None = None,
    parent_pid: int | None = None,
    auth_secret_file: Path | None = None,
    min_poll: float = 0.02,
    max_poll: float = 0.5,
    busy_max_poll: float = 0.05,
    active_window: float = 10.0,
    preload_modules: Sequence[str] = DEFAULT_PRELOAD,
    task_type: str = "clientapp",
) -> int:
    """Acquire tasks from a Runtime API and run each in a forked child. ``clientapp``:
    ClientApp tasks from the SuperNode's, one at a time (a SuperNode hands out one
    message at a time). ``serverapp``: ServerApp tasks from the SuperLink's, each run's
    side by side (concurrent runs). Polls every ``min_poll`` s after a task, backing off
    to ``busy_max_poll`` while the last task is less than ``active_window`` s old (a run's
    next message is coming), then to ``max_poll``. Returns when its parent
    (``parent_pid``: the worker, whose SuperNode may be restarted meanwhile, or the
    coordinator service) is gone."""
    import httpx
    from flwr.proto.runtime_pb2 import AcquireTaskRequest  # noqa: I001
    from flwr.supercore.constant import TaskType
    from flwr.supercore.interceptors import (
        RuntimeVersionHttpInterceptor,
        SuperExecAuthHttpInterceptor,
    )
    from flwr.supercore.runtime import RuntimeHttpClient
    from flwr.supercore.tls import validate_and_resolve_root_certificates

    children = _Children()
    signal.signal(signal.SIGTERM, children.terminate)
    t0 = time.perf_counter()
    preload(preload_modules)
    shorten_object_pull_backoff()  # inherited by every forked task
    log.info("preloaded %s in %.1f s", ", ".join(preload_modules), time.perf_counter() - t0)

    root_cert = validate_and_resolve_root_certificates(root_certificates, insecure)
    interceptors: list = [RuntimeVersionHttpInterceptor(component_name="SuperExec")]
    if auth_secret_file is not None:
        interceptors.append(SuperExecAuthHttpInterceptor(
            master_secret=auth_secret_file.read_bytes(), protected_methods={ACQUIRE_METHOD},
        ))
    client = RuntimeHttpClient.from_server_address(
        server_address=runtime_api_address, insecure=insecure, root_certificates=root_cert,
        interceptors=interceptors,  # no retry invoker: this loop retries, checking the parent
    )
    server = task_type == "serverapp"
    request = AcquireTaskRequest(
        supported_task_types=[TaskType.SERVER_APP if server else TaskType.CLIENT_APP])
    child = _run_server_child if server else _run_child
    interval, last_task = min_poll, -active_window
    try:
        while parent_pid is None or _alive(parent_pid):
            children.reap(block=False)
            try:
                res = client.AcquireTask(request)
            except httpx.HTTPError as exc:
                log.warning("Runtime API at %s: %s; retrying", runtime_api_address, exc)
                time.sleep(1.0)
                continue
            if not (res.HasField("task") and res.token):
                time.sleep(interval)
                busy = time.monotonic() - last_task < active_window
                interval = min(busy_max_poll if busy else max_poll, interval * 1.5)
                continue
            pid = os.fork()
            if pid == 0:
                child(runtime_api_address, res.token, insecure=insecure, root_cert=root_cert)
            children.running[pid] = (res.task.task_id, res.task.run_id, time.perf_counter())
            if not server:
                children.reap(block=True)
            interval, last_task = min_poll, time.monotonic()
    finally:
        client.close()
    log.info("parent %s is gone; stopping", parent_pid)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--runtime-api-address", required=True)
    parser.add_argument("--insecure", action="store_true")
    parser.add_argument("--root-certificates", default=None)
    parser.add_argument("--parent-pid", type=int, default=None)
    parser.add_argument("--superexec-auth-secret-file", type=Path, default=None)
    parser.add_argument("--task-type", choices=TASK_TYPES, default="clientapp")
    parser.add_argument("--preload", default=None,
                        help="comma-separated modules to import once (default: those of "
                             "the task type's app)")
    args = parser.parse_args(argv)
    preload_arg = args.preload if args.preload is not None else ",".join(
        SERVERAPP_PRELOAD if args.task_type == "serverapp" else DEFAULT_PRELOAD)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per poll otherwise
    return serve(
        args.runtime_api_address, insecure=args.insecure,
        root_certificates=args.root_certificates, parent_pid=args.parent_pid,
        auth_secret_file=args.superexec_auth_secret_file,
        preload_modules=[m.strip() for m in preload_arg.split(",") if m.strip()],
        task_type=args.task_type,
    )


if __name__ == "__main__":
    sys.exit(main())
