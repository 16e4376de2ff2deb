"""``own_postgres``: a throwaway PostgreSQL server of the test's own, on a free loopback
port, that the test may stop and start (never the shared one of the other tests)."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

PG_BINARIES = sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=lambda p: p.parent.name)


@dataclass
class OwnPostgres:
    url: str
    port: int
    data: Path
    bin: Path

    def ctl(self, *args: str) -> None:
        """pg_ctl on this server (as the postgres user when we are root), bounded in time."""
        cmd = [str(self.bin / "pg_ctl"), "-D", str(self.data), "-w", "-t", "60", *args]
        subprocess.run(_as_postgres(cmd), check=True, timeout=90, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)

    def start(self) -> None:
        self.ctl("-l", str(self.data / "log"), "-o",
                 f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.data}", "start")

    def stop(self) -> None:
        self.ctl("-m", "fast", "stop")


def _as_postgres(cmd: list[str]) -> list[str]:
    if os.geteuid() != 0:
        return cmd
    return ["su", "postgres", "-s", "/bin/sh", "-c", " ".join(f"'{c}'" for c in cmd)]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def own_postgres() -> Iterator[OwnPostgres]:
    if not PG_BINARIES or not (PG_BINARIES[-1] / "pg_ctl").exists():
        message = "PostgreSQL binaries (/usr/lib/postgresql/*/bin) are not installed"
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the PostgreSQL fault tests but {message}", pytrace=False)
        pytest.skip(message)
    data = Path(tempfile.mkdtemp(prefix="fedmerge-faults-pg-"))  # not under a 0700 tmp_path
    if os.geteuid() == 0:
        shutil.chown(data, "postgres")
    server = OwnPostgres("", _free_port(), data, PG_BINARIES[-1])
    subprocess.run(_as_postgres([str(server.bin / "initdb"), "-D", str(data), "-A", "trust",
                                 "-U", "postgres"]),
                   check=True, timeout=120, stdout=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    server.start()
    server.url = f"postgresql+psycopg://postgres@127.0.0.1:{server.port}/postgres"
    try:
        yield server
    finally:
        with contextlib.suppress(subprocess.SubprocessError):  # the test stopped it
            server.stop()
        shutil.rmtree(data, ignore_errors=True)
