"""The import graph of the package has no circle, counting lazy imports inside functions too.

A circle means two modules that can only be understood together, and a lazy import that climbs back
up (the gate's code importing the loader that builds the gate) hides one. Imports of the package
itself (``from . import __version__``) are not edges: every submodule already runs after it.
"""

from __future__ import annotations

import ast
from pathlib import Path

from helpers import ROOT

PACKAGE = ROOT / "skinmole"


def _module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def import_graph() -> dict[str, set[str]]:
    """{module: the skinmole modules it imports anywhere in its body}."""
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(anchor + ([base] if base else []))
                targets = [base] + [f"{base}.{a.name}" for a in node.names]
            for t in targets:
                if t in modules and t != name and t != "skinmole":
                    graph[name].add(t)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle as [a, b, ..., a], or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node):
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_the_graph_sees_relative_and_lazy_imports():
    graph = import_graph()
    assert "skinmole.errors" in graph["skinmole.model_folder"]  # from .errors import ... at the top
    assert "skinmole.engines" in graph["skinmole.model"]  # imported inside load_model's helper


def test_the_package_has_no_import_circle():
    cycle = find_cycle(import_graph())
    assert cycle is None, " -> ".join(cycle)


def test_the_bottom_of_the_house_imports_nothing_above_it():
    graph = import_graph()
    assert graph["skinmole.errors"] == set()
    assert graph["skinmole.config"] <= {"skinmole.errors"}
    assert graph["skinmole.download"] <= {"skinmole.errors"}
    below_the_loader = {"skinmole.errors", "skinmole.config", "skinmole.model_folder", "skinmole.colour_constancy",
                        "skinmole.head", "skinmole.calibration", "skinmole.engines", "skinmole.quality",
                        "skinmole.images", "skinmole.download"}
    for module in below_the_loader:
        assert "skinmole.model" not in graph[module] and "skinmole.hub" not in graph[module], module
