"""fedmerge's home directory: where the coordinator and the CLI keep the run store,
checkpoints and the coordinator's own state unless told otherwise.

``$FEDMERGE_HOME`` when set, else ``~/.fedmerge``. The coordinator hands its out dir to
its children as ``FEDMERGE_HOME``, so the ServerApp of each run, ``fedmerge runs``,
``show``, ``export``, ``resume`` and ``dashboard`` all find the same store by default.
"""

from __future__ import annotations

import os
from pathlib import Path

ENV_HOME = "FEDMERGE_HOME"
DEFAULT_HOME = "~/.fedmerge"


def fedmerge_home() -> Path:
    """The home directory, absolute (not created here)."""
    return Path(os.environ.get(ENV_HOME) or DEFAULT_HOME).expanduser().resolve()


def out_dir_or_home(out_dir: str | Path | None) -> Path:
    """An explicit out dir, resolved against the working directory; else the home. The
    literal default ``~/.fedmerge`` also means the home, so that a run config carrying
    pyproject's default follows ``$FEDMERGE_HOME``."""
    if out_dir is None or str(out_dir) in ("", DEFAULT_HOME):
        return fedmerge_home()
    return Path(out_dir).expanduser().resolve()
