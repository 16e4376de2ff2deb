"""The dependency rules of STYLE.md: aggregation is pure torch; the store imports
neither torch nor flwr; the dashboard reads only the store; the client knows no
coordinator; the coordinator (the server) knows neither the command line and deployment
processes (fedmerge/) nor the dashboard. Checked on the source's import statements, so a
lazy import counts too."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PROJECT = {"aggregation", "client", "coordinator", "dashboard", "fedmerge"}


def imports_of(folder: str) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for path in (ROOT / folder).rglob("*.py"):
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module)
        found[str(path.relative_to(ROOT))] = names
    return found


def offending(folder: str, allowed_project: set[str], banned: set[str]) -> list[str]:
    bad = []
    for path, names in imports_of(folder).items():
        for name in names:
            top = name.split(".")[0]
            inside = "coordinator.store" if name.startswith("coordinator.store") else top
            if top in banned or (top in PROJECT and inside not in allowed_project):
                bad.append(f"{path}: {name}")
    return bad


@pytest.mark.parametrize(
    ("folder", "allowed", "banned"),
    [
        ("aggregation", {"aggregation"}, {"flwr", "numpy", "sqlalchemy", "logging"}),
        ("coordinator/store", {"coordinator.store"}, {"torch", "flwr"}),
        ("dashboard", {"dashboard", "coordinator.store"}, {"torch", "flwr"}),
        ("client", {"client"}, set()),
        # The server: no command line, no deployment processes, no dashboard.
        ("coordinator", {"aggregation", "client", "coordinator", "coordinator.store"}, set()),
    ],
)
def test_dependency_direction(folder: str, allowed: set[str], banned: set[str]) -> None:
    assert offending(folder, allowed, banned) == []


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_import_graph() -> dict[str, set[str]]:
    """Module -> the project modules it imports (lazy imports count), over the packages."""
    modules = {
        _module_name(p): p for folder in sorted(PROJECT) for p in (ROOT / folder).rglob("*.py")
    }
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            else:
                continue
            targets.update(f for f in found if f in modules and f != name)
        graph[name] = targets
    return graph


def test_no_import_cycles() -> None:
    graph = project_import_graph()
    cycles: list[list[str]] = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(path[path.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for start in sorted(graph):
        if start not in state:
            visit(start, [start])
    assert cycles == []


def test_no_process_wide_warning_filter_at_import() -> None:
    """A module may not install a warnings filter when imported: entry points do."""
    bad = []
    for folder in sorted(PROJECT):
        for path in (ROOT / folder).rglob("*.py"):
            for node in ast.parse(path.read_text()).body:
                call = node.value if isinstance(node, ast.Expr) else None
                if (isinstance(call, ast.Call) and isinstance(call.func, ast.Attribute)
                        and call.func.attr in ("filterwarnings", "simplefilter")):
                    bad.append(str(path.relative_to(ROOT)))
    assert bad == []
