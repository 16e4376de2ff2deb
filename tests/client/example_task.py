"""Where the example task of examples/tabular-task comes from in the tests: the installed
package (``pip install -e examples/tabular-task``, as .ci/run does), else its source
folder, put on sys.path and on PYTHONPATH (for Ray workers and worker processes)."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

TABULAR = "fedmerge_example_tabular:TabularTask"
SOURCE = Path(__file__).resolve().parents[2] / "examples" / "tabular-task" / "src"


def example_importable() -> None:
    if importlib.util.find_spec("fedmerge_example_tabular") is not None:
        return
    sys.path.insert(0, str(SOURCE))
    parts = [str(SOURCE), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    os.environ["PYTHONPATH"] = os.pathsep.join(parts)
