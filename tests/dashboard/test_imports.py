"""The dashboard imports coordinator.store and web/plot libraries only: never torch or flwr."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

DASHBOARD = Path(__file__).resolve().parents[2] / "dashboard"
ALLOWED = {"coordinator", "dashboard", "fastapi", "starlette", "jinja2", "uvicorn",
           "matplotlib", "pydantic", "sqlalchemy"}
FORBIDDEN = ("torch", "flwr", "ray", "client", "aggregation")


def _imported(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


def test_source_imports_stay_inside_the_allowed_set() -> None:
    for path in DASHBOARD.rglob("*.py"):
        for name in _imported(path):
            top = name.split(".")[0]
            assert top in ALLOWED or top in sys.stdlib_module_names, f"{path.name}: {name}"
            if top == "coordinator":
                assert name == "coordinator.store" or name.startswith("coordinator.store."), (
                    f"{path.name} imports {name}; the dashboard may use coordinator.store only"
                )


def test_importing_the_dashboard_loads_no_torch_or_flwr() -> None:
    code = (
        "import json, sys; import dashboard.app, dashboard.server; "
        "print(json.dumps(sorted(sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=DASHBOARD.parent)
    loaded = json.loads(out.stdout)
    bad = [m for m in loaded if m.split(".")[0] in FORBIDDEN]
    assert not bad, bad
    outside_store = [
        m for m in loaded
        if m.startswith("coordinator.") and not m.startswith("coordinator.store")
    ]
    assert not outside_store, outside_store
