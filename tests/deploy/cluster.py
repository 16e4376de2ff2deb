"""A coordinator and workers as real processes on 127.0.0.1, for the deployment tests and
tests/deploy/measure_latency.py. Every process gets a tag in its environment; ``close``
SIGKILLs each process that carries it (Flower's detached helpers too), whatever state
the test left them in."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from fedmerge.deploy.procs import free_port, port_open

REPO = Path(__file__).resolve().parents[2]
TAG = "FEDMERGE_DEPLOY_TEST_TAG"


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path
    work_dir: Path | None = None

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def logs(self) -> str:
        """Its own output and, for a worker, its SuperNode's and executor's."""
        parts = [f"--- {self.name} ---\n{self.text()[-4000:]}"]
        if self.work_dir is not None:
            for p in sorted((self.work_dir / "logs").glob("*.log")):
                tail = p.read_text(errors="replace")[-4000:]
                parts.append(f"--- {self.name}/{p.name} ---\n{tail}")
        return "\n".join(parts)


def _tagged_pids(tag: str) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        if f"{TAG}={tag}".encode() in environ.split(b"\0"):
            pids.append(int(entry.name))
    return pids


class LocalCluster:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.tag = uuid.uuid4().hex
        self.flwr_home = root / "flwr-cli"
        self.env = {k: v for k, v in os.environ.items() if k != "FEDMERGE_DB_URL"}
        self.out_dir = root / "coord"
        # fedmerge's home is the coordinator's out dir, as on a coordinator machine with the
        # defaults: `fedmerge submit` finds the operator token and the store there.
        self.env.update({TAG: self.tag, "FLWR_HOME": str(self.flwr_home),
                         "PYTHONUNBUFFERED": "1", "FEDMERGE_HOME": str(self.out_dir)})
        self.env.pop("FEDMERGE_OPERATOR_TOKEN", None)
        self.procs: list[Proc] = []
        self.port = free_port()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _spawn(self, name: str, argv: Sequence[str], *, work_dir: Path | None = None) -> Proc:
        log = self.root / f"{name}.log"
        with open(log, "wb") as out:
            popen = subprocess.Popen(
                [sys.executable, "-m", "fedmerge.cli", *argv], cwd=REPO, env=self.env,
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: killpg takes the tree
            )
        proc = Proc(name, popen, log, work_dir)
        self.procs.append(proc)
        return proc

    def start_coordinator(self, *args: str, dashboard_port: int | None = None,
                          name: str = "coordinator") -> Proc:
        dash = ["--dashboard-port", str(dashboard_port)] if dashboard_port else ["--no-dashboard"]
        return self._spawn(name, [
            "coordinator", "--port", str(self.port), "--out-dir", str(self.out_dir), *dash,
            *args,
        ])

    def start_worker(self, name: str, *args: str) -> Proc:
        work_dir = self.root / name
        return self._spawn(name, ["worker", "--coordinator", self.address,
                                  "--work-dir", str(work_dir), *args], work_dir=work_dir)

    def wait_coordinator(self, proc: Proc, timeout: float = 60.0) -> None:
        self._until(lambda: port_open("127.0.0.1", self.port), proc, timeout,
                    "the SuperLink to listen")

    def wait_log(self, proc: Proc, text: str, *, count: int = 1, timeout: float = 60.0) -> None:
        self._until(lambda: proc.text().count(text) >= count, proc, timeout, repr(text))

    def wait_worker(self, proc: Proc, timeout: float = 90.0) -> None:
        """The SuperNode is connected and (isolation warm) the executor has preloaded."""
        logs = proc.work_dir / "logs"  # type: ignore[operator]

        def ready() -> bool:
            node, executor = logs / "supernode.log", logs / "executor.log"
            if not (node.exists() and "SuperNode ID" in node.read_text(errors="replace")):
                return False
            return not executor.exists() or "preloaded" in executor.read_text(errors="replace")

        self._until(ready, proc, timeout, "the worker to connect")

    def _until(self, check, proc: Proc, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not check():
            if proc.popen.poll() is not None:
                raise AssertionError(f"{proc.name} exited ({proc.popen.returncode}) while "
                                     f"waiting for {what}\n{proc.logs()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}\n"
                                     f"{proc.logs()}")
            time.sleep(0.2)

    def submit(self, *args: str, timeout: float = 240.0, wait: bool = True) -> Proc:
        name = f"submit-{sum(p.name.startswith('submit') for p in self.procs)}"
        proc = self._spawn(name, ["submit", "--connection", "test", "--superlink",
                                      self.address, "--app", str(REPO), *args])
        if wait:
            try:
                proc.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                raise AssertionError(f"fedmerge submit still running after {timeout:.0f} s\n"
                                     + self.all_logs()) from None
        return proc

    def flower_run_id(self, submit: Proc) -> int:
        match = re.search(r"started run (\d+)", submit.text())
        assert match, submit.text()
        return int(match.group(1))

    @property
    def db_url(self) -> str:
        return f"sqlite:///{self.out_dir / 'fedmerge.db'}"

    def kill(self, proc: Proc) -> None:
        """SIGKILL a service and everything it started, as a crash of its machine would."""
        os.killpg(proc.popen.pid, signal.SIGKILL)
        proc.popen.wait(timeout=10)

    def all_logs(self) -> str:
        return "\n".join(p.logs() for p in self.procs)

    def close(self) -> None:
        for p in self.procs:
            if p.popen.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.popen.pid, signal.SIGKILL)
        for _ in range(3):  # strays: detached Flower helpers, forked tasks
            pids = _tagged_pids(self.tag)
            if not pids:
                break
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.2)
        for p in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.popen.wait(timeout=5)
