"""The dependency rules of STYLE.md: aggregation is pure torch; the store imports
neither torch nor flwr; the dashboard reads only the store; the client knows no
coordinator. Checked on the source's import statements, so a lazy import counts too."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PROJECT = {"aggregation", "client", "coordinator", "dashboard"}


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
    ],
)
def test_dependency_direction(folder: str, allowed: set[str], banned: set[str]) -> None:
    assert offending(folder, allowed, banned) == []
