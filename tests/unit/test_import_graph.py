"""The project's import graph: no cycles, modes are leaves, the lower floors never reach up.

Every project module is parsed with ``ast`` (nothing is imported): top-level imports and the lazy
ones inside functions alike. ``from pkg import name`` points at ``pkg.name`` when that is a module,
else at ``pkg``; relative imports resolve against the importing module's package.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SKIP = {".venv", "data", "output", ".git", "__pycache__"}
MODES_PACKAGE = "applications"
# applications/ modules that turn the whole config into parts for several modes: helpers, not modes
MODE_HELPERS = {"applications", "applications.common", "applications.strategies", "applications.sweep_plan"}
LOWER_FLOORS = ("engine", "models", "dataloader", "criterions", "optim", "utils")
FEATURES = ("explain", "export")  # rooms above the lower floors: the modes use them, the floors below do not


def project_modules(root: Path = ROOT) -> dict[str, Path]:
    """Dotted module name -> file, for every .py file of the project (packages as ``pkg`` for __init__)."""
    modules = {}
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        if SKIP & set(rel.parts):
            continue
        parts = list(rel.with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        if parts:
            modules[".".join(parts)] = path
    return modules


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The project modules ``name`` imports anywhere in its file (functions included)."""
    is_package = path.name == "__init__.py"
    package = name if is_package else name.rpartition(".")[0]
    found: set[str] = set()

    def nearest(dotted: str) -> str | None:  # ``a.b.c`` -> the longest prefix that is a project module
        while dotted:
            if dotted in modules:
                return dotted
            dotted = dotted.rpartition(".")[0]
        return None

    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".") if package else []
                base = base[:len(base) - (node.level - 1)] if node.level > 1 else base
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            targets = [f"{source}.{alias.name}" if f"{source}.{alias.name}" in modules else source
                       for alias in node.names]
        else:
            continue
        for target in targets:
            module = nearest(target)
            if module is not None and module != name:
                found.add(module)
    return found


def import_graph(root: Path = ROOT) -> dict[str, set[str]]:
    modules = project_modules(root)
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as ``[a, b, ..., a]``, or None (iterative depth-first search)."""
    state: dict[str, int] = {}  # 1 on the stack, 2 done
    for start in sorted(graph):
        if state.get(start):
            continue
        stack = [(start, iter(sorted(graph[start])))]
        path = [start]
        state[start] = 1
        while stack:
            node, children = stack[-1]
            child = next(children, None)
            if child is None:
                state[node] = 2
                stack.pop()
                path.pop()
            elif state.get(child) == 1:
                return path[path.index(child):] + [child]
            elif not state.get(child):
                state[child] = 1
                path.append(child)
                stack.append((child, iter(sorted(graph.get(child, ())))))
    return None


def strongly_connected(graph: dict[str, set[str]]) -> list[set[str]]:
    """The groups of modules that reach each other (Tarjan), those of more than one module only."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    groups: list[set[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for child in sorted(graph.get(node, ())):
            if child not in index:
                visit(child)
                low[node] = min(low[node], low[child])
            elif child in stack:
                low[node] = min(low[node], index[child])
        if low[node] == index[node]:
            group = set()
            while not group or member != node:
                member = stack.pop()
                group.add(member)
            if len(group) > 1:
                groups.append(group)

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return groups


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle of every group of modules that import each other."""
    return [find_cycle({m: graph[m] & group for m in group}) for group in strongly_connected(graph)]


def is_mode(module: str) -> bool:
    return module.startswith(MODES_PACKAGE + ".") and module not in MODE_HELPERS


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    return import_graph()


def test_graph_reads_lazy_relative_and_submodule_imports(tmp_path):
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "__init__.py").write_text("from .a import f\n")
    (tmp_path / "pkg" / "a.py").write_text("def f():\n    from . import b\n")
    (tmp_path / "pkg" / "b.py").write_text("from pkg import a\nimport pkg.c as c\n")
    (tmp_path / "pkg" / "c.py").write_text("from pkg import f\n")
    g = import_graph(tmp_path)
    assert g == {"pkg": {"pkg.a"}, "pkg.a": {"pkg.b"}, "pkg.b": {"pkg.a", "pkg.c"}, "pkg.c": {"pkg"}}
    assert find_cycle(g) in (["pkg.a", "pkg.b", "pkg.a"], ["pkg", "pkg.a", "pkg.b", "pkg.c", "pkg"])
    assert find_cycle({"x": {"y"}, "y": set()}) is None
    assert len(find_cycles({**g, "x": {"y"}, "y": {"x"}})) == 2


def test_no_import_cycle(graph):
    cycles = find_cycles(graph)
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(cycle) for cycle in cycles)


def test_modes_import_no_sibling_mode(graph):
    bad = sorted(f"{m} imports {t}" for m, targets in graph.items() if m.startswith(MODES_PACKAGE + ".")
                 for t in targets if is_mode(t))
    assert not bad, "a mode (or a helper of applications/) imports a mode: " + "; ".join(bad)


def test_lower_floors_never_import_applications_or_config(graph):
    bad = sorted(f"{m} imports {t}" for m, targets in graph.items() if m.split(".")[0] in LOWER_FLOORS
                 for t in targets if t.split(".")[0] in (MODES_PACKAGE, "config"))
    assert not bad, "; ".join(bad)


def test_lower_floors_never_import_features(graph):
    bad = sorted(f"{m} imports {t}" for m, targets in graph.items() if m.split(".")[0] in LOWER_FLOORS
                 for t in targets if t.split(".")[0] in FEATURES)
    assert not bad, "; ".join(bad)
