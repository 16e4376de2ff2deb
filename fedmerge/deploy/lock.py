"""One worker per work dir: ``<work-dir>/worker.lock`` holds an exclusive ``flock`` for
the worker's lifetime and says the holder's pid.

The kernel drops the lock when its process dies however it dies, so a lock file left by a
killed worker is stale and simply taken over; a live holder is named in the error.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import IO

LOCK_NAME = "worker.lock"


class WorkDirBusy(RuntimeError):
    """Another live worker holds this work dir."""


class WorkDirLock:
    def __init__(self, work_dir: Path) -> None:
        self.path = work_dir / LOCK_NAME
        self._file: IO[str] | None = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        f = open(self.path, "a+")  # noqa: SIM115 - held until release()
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "unknown"
            f.close()
            raise WorkDirBusy(
                f"work dir {self.path.parent} is in use by another worker (pid {holder}); "
                "give each worker on a machine its own --work-dir"
            ) from None
        f.seek(0)
        f.truncate()
        f.write(f"{os.getpid()}\n")
        f.flush()
        self._file = f

    def release(self) -> None:
        if self._file is not None:
            fcntl.flock(self._file, fcntl.LOCK_UN)
            self._file.close()
            self._file = None

    def __enter__(self) -> WorkDirLock:
        self.acquire()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.release()
