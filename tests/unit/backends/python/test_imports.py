"""The Python backend's modules import each other one way only (lazy and TYPE_CHECKING imports too)."""

from __future__ import annotations

import ast
from pathlib import Path

import nereid.backends.python as package

PREFIX = "nereid.backends.python."


def _imports(path: Path) -> set[str]:
    """Sibling modules ``path`` imports anywhere: module level, ``if TYPE_CHECKING:`` and lazy imports."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.module == PREFIX.rstrip("."):
                found.update(alias.name for alias in node.names)
            elif node.module.startswith(PREFIX):
                found.add(node.module.removeprefix(PREFIX))
        elif isinstance(node, ast.Import):
            found.update(a.name.removeprefix(PREFIX) for a in node.names if a.name.startswith(PREFIX))
    return found


def test_no_import_cycles_between_the_backends_modules():
    folder = Path(package.__file__).parent
    graph = {path.stem: _imports(path) for path in folder.glob("*.py")}
    cycles: list[list[str]] = []

    def visit(module: str, trail: list[str]) -> None:
        for target in sorted(graph.get(module, ())):
            if target in trail:
                cycles.append([*trail[trail.index(target) :], target])
            else:
                visit(target, [*trail, target])

    for module in graph:
        visit(module, [module])
    assert "backend" in graph and "isolation" in graph and "pb_utils" in graph
    assert cycles == []
