"""The shape of the package: no import cycle between modules of lmms_engine, none between its
subpackages, and no module over MAX_LINES lines. Read from the source (ast): nothing is imported."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE_ROOT = Path(__file__).resolve().parents[2] / "lmms_engine"
MAX_LINES = 400


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE_ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def all_modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(PACKAGE_ROOT.rglob("*.py"))}


def imported_modules(path: Path, name: str, known: set[str]) -> set[str]:
    """The lmms_engine modules `path` imports anywhere (module level and inside functions);
    `from package import module` counts as the module, `from module import name` as the module."""
    is_package = path.name == "__init__.py"
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = _absolute(node, name, is_package)
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return {_owner(target, known) for target in found if _owner(target, known)} - {name}


def _absolute(node: ast.ImportFrom, name: str, is_package: bool) -> str:
    if not node.level:
        return node.module or ""
    package = name.split(".") if is_package else name.split(".")[:-1]
    base = package[: len(package) - node.level + 1]
    return ".".join([*base, node.module] if node.module else base)


def _owner(target: str, known: set[str]) -> str | None:
    """The longest known module that `target` names or lies inside (None: not lmms_engine)."""
    parts = target.split(".")
    for end in range(len(parts), 0, -1):
        candidate = ".".join(parts[:end])
        if candidate in known:
            return candidate
    return None


def import_graph() -> dict[str, set[str]]:
    modules = all_modules()
    known = set(modules)
    graph = {name: imported_modules(path, name, known) for name, path in modules.items()}
    # A package's own __init__ importing a parent package is not an edge worth keeping.
    return {name: {t for t in targets if t != "lmms_engine"} for name, targets in graph.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of `graph` as [a, b, ..., a], or None (depth-first search, colours)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def package_graph(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """Subpackage (lmms_engine.data, ...) -> the other subpackages its modules import."""
    def package(name: str) -> str:
        return ".".join(name.split(".")[:2])

    packages: dict[str, set[str]] = {}
    for name, targets in graph.items():
        packages.setdefault(package(name), set()).update(package(t) for t in targets if package(t) != package(name))
    return packages


def test_the_walker_sees_function_level_and_relative_imports(tmp_path):
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert find_cycle(graph) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
    modules = all_modules()
    dataset = imported_modules(modules["lmms_engine.data.dataset"], "lmms_engine.data.dataset", set(modules))
    assert "lmms_engine.data.packing" in dataset  # `from .packing import ...`
    app = imported_modules(modules["lmms_engine.train"], "lmms_engine.train", set(modules))
    assert "lmms_engine.train.app" in app  # imported inside main()


def test_no_import_cycle_between_modules():
    cycle = find_cycle(import_graph())
    assert cycle is None, f"import cycle: {' -> '.join(cycle)}"


def test_no_import_cycle_between_subpackages():
    cycle = find_cycle(package_graph(import_graph()))
    assert cycle is None, f"import cycle between subpackages: {' -> '.join(cycle)}"


@pytest.mark.parametrize("name", sorted(all_modules()))
def test_module_is_at_most_400_lines(name):
    lines = len(all_modules()[name].read_text().splitlines())
    assert lines <= MAX_LINES, f"{name} has {lines} lines (at most {MAX_LINES}): split it by job"
