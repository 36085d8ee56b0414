"""The project's import graph: no cycles, modes are leaves, the arrows point down the floors of the house.

Every project module (the repository root but tests/, z_task_shell/ and data folders) is parsed with ``ast``
(nothing is imported): top-level imports and the lazy ones inside functions alike. ``from pkg import name``
points at ``pkg.name`` when that is a module, else at ``pkg``; relative imports resolve against the importing
module's package.

The floors (``RANKS``): a module imports its own floor or the ones below, never one above; the only arrows
up are the thin command-line tools whose paths the docs promise (``ALLOWED_UP``). A mode is a module
directly in ``applications/``, and the modes are the run targets of ``config.MODE_REGISTRY``; shared set-up
lives below them (``applications/setup/``, ``engine/``, ...).
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SKIP = {".venv", ".git", "__pycache__"}  # anywhere
SKIP_TOP = {"tests", "z_task_shell", "data", "output"}  # at the repository root: not project code
MODES_PACKAGE = "applications"
# Each room (top-level package or module) on its floor: a module imports its own floor and those below.
RANKS = {
    "utils": 0,
    "dataloader": 1, "models": 1, "criterions": 1, "optim": 1,
    "engine": 2, "config": 2,
    "explain": 3, "export": 3, "experiments": 3,
    "applications": 4,
    "main": 5, "benchmarks": 5, "demos": 5,
}
LOWER_FLOORS = ("engine", "models", "dataloader", "criterions", "optim", "utils")  # never read the config
FEATURES = ("explain", "export")  # rooms above the lower floors: the modes use them, the floors below do not
# The only arrows up: command-line tools that keep the paths the docs name, each a thin wrapper of code that
# lives on its own floor.
ALLOWED_UP = {"utils.check_images": "dataloader", "utils.make_digits": "dataloader",
              "utils.convert_data": "dataloader"}  # tool -> the room it wraps
THIN_TOOL_LINES = 90


def project_modules(root: Path = ROOT) -> dict[str, Path]:
    """Dotted module name -> file, for every .py file of the project (packages as ``pkg`` for __init__)."""
    modules = {}
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        if SKIP & set(rel.parts) or rel.parts[0] in SKIP_TOP:
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
    """Module -> the project modules it imports, for every module under ``root``."""
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
            while True:
                member = stack.pop()
                group.add(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(group)

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return groups


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle of every group of modules that import each other."""
    return [find_cycle({m: graph[m] & group for m in group}) for group in strongly_connected(graph)]


def room(module: str) -> str:
    """The top-level package (or module) that ``module`` belongs to."""
    return module.split(".")[0]


def mode_modules(modules: dict[str, Path]) -> set[str]:
    """The modes: the modules directly in ``applications/`` (not its ``__init__``, not in a sub-package)."""
    return {name for name, path in modules.items()
            if name.count(".") == 1 and room(name) == MODES_PACKAGE and path.name != "__init__.py"}


def up_arrows(graph: dict[str, set[str]], ranks: dict[str, int] = RANKS,
              allowed: dict[str, str] = ALLOWED_UP) -> list[str]:
    """The arrows ``a -> b`` from a floor to a higher one, but those of an ``allowed`` tool into the one room
    it wraps (``allowed``: tool -> room)."""
    return sorted(f"{m} -> {t}" for m, targets in graph.items() for t in targets
                  if ranks[room(m)] < ranks[room(t)] and allowed.get(m) != room(t))


def arrows_into(graph: dict[str, set[str]], sources, targets) -> list[str]:
    """The arrows from a module of the rooms ``sources`` to one of the rooms ``targets``."""
    return sorted(f"{m} -> {t}" for m, found in graph.items() if room(m) in sources for t in found
                  if room(t) in targets)


@pytest.fixture(scope="module")
def modules() -> dict[str, Path]:
    return project_modules()


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


def test_graph_covers_the_project(graph):
    expected = {"main", "config", "config.base", "config.parser", "config.modes.train", "applications.train",
                "engine.loops", "dataloader.datasets", "models", "utils.check_images", "explain", "export",
                "benchmarks.gpu_check", "demos.classifier", "demos.serve"}
    assert expected <= set(graph), sorted(expected - set(graph))
    assert not [m for m in graph if room(m) in SKIP_TOP], "tests/ and the data folders are not project code"
    unplaced = sorted({room(m) for m in graph} - set(RANKS))
    assert not unplaced, f"put each top-level package or module on a floor of RANKS: {unplaced}"
    assert sum(len(targets) for targets in graph.values()) > 300  # the arrows are read, not only the modules


def test_no_import_cycle(graph):
    cycles = find_cycles(graph)
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(cycle) for cycle in cycles)


def test_arrows_point_down(graph):
    bad = up_arrows(graph)
    assert not bad, "arrows up the floors of RANKS (import from your floor or below): " + "; ".join(bad)


def test_an_up_arrow_breaks_the_rules(tmp_path):
    for folder, files in {"utils": {"a.py": "import os\nfrom applications import b\n",
                                    "check_images.py": "from dataloader import io\n", "c.py": "from utils import a\n"},
                          "dataloader": {"io.py": "import utils.c\n"},
                          "config": {"parser.py": "def f():\n    from applications import b\n"},
                          "applications": {"b.py": "from config import parser\n",
                                           "c.py": "from applications import b\n"}}.items():
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "__init__.py").write_text("")
        for name, text in files.items():
            (tmp_path / folder / name).write_text(text)
    g = import_graph(tmp_path)
    assert up_arrows(g) == ["config.parser -> applications.b", "utils.a -> applications.b"]
    assert up_arrows(g, allowed={})[-1] == "utils.check_images -> dataloader.io"
    # an allowed tool reaches only the room it wraps
    assert up_arrows(g, allowed={"utils.check_images": "models"})[-1] == "utils.check_images -> dataloader.io"
    assert arrows_into(g, ("config",), (MODES_PACKAGE,)) == ["config.parser -> applications.b"]
    modes = mode_modules(project_modules(tmp_path))
    assert modes == {"applications.b", "applications.c"}
    assert [f"{m} -> {t}" for m in sorted(modes) for t in g[m] if t in modes] == ["applications.c -> applications.b"]


def test_no_lower_floor_imports_applications(graph):
    below = [r for r, rank in RANKS.items() if rank < RANKS[MODES_PACKAGE]]
    bad = arrows_into(graph, below, (MODES_PACKAGE,))
    assert not bad, "only main.py, benchmarks/ and demos/ import the modes: " + "; ".join(bad)


def test_config_imports_no_mode(graph):
    bad = arrows_into(graph, ("config",), (MODES_PACKAGE,))
    assert not bad, "config holds the flags of every mode (config/modes/) and imports none: " + "; ".join(bad)


def test_modes_import_no_sibling_mode(graph, modules):
    modes = mode_modules(modules)
    bad = sorted(f"{m} imports {t}" for m, targets in graph.items() if room(m) == MODES_PACKAGE
                 for t in targets if t in modes)
    assert not bad, "a mode (or a helper of applications/) imports a mode: " + "; ".join(bad)


def test_the_modes_are_the_registry_run_targets(modules):
    from config import MODES
    assert mode_modules(modules) == set(MODES.values()), \
        "a module directly in applications/ is a mode that MODE_REGISTRY runs; helpers go in applications/setup/"


def test_lower_floors_never_import_applications_or_config(graph):
    bad = arrows_into(graph, LOWER_FLOORS, (MODES_PACKAGE, "config"))
    assert not bad, "; ".join(bad)


def test_lower_floors_never_import_features(graph):
    bad = arrows_into(graph, LOWER_FLOORS, FEATURES)
    assert not bad, "; ".join(bad)


def test_the_tools_that_reach_up_are_thin_and_documented(modules):
    docs = "\n".join(p.read_text() for p in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))])
    for tool in sorted(ALLOWED_UP):
        path = modules[tool]
        assert path.relative_to(ROOT).as_posix() in docs, f"{tool}: no page names it, so it may move"
        lines = len(path.read_text().splitlines())
        assert lines <= THIN_TOOL_LINES, \
            f"{tool} has {lines} lines: keep the tool a thin wrapper (<= {THIN_TOOL_LINES}) of code on its own floor"


def demo_imports(path: Path) -> set[str]:
    """The top-level names a demos/ script imports (a relative import as ``.``: a demo is no package)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            found.add("." if node.level else (node.module or "").split(".")[0])
    return found


def test_the_demos_import_no_project_code(modules):
    """demos/ runs where the project is not installed: a demo imports libraries and its siblings in demos/
    (the script's folder is on sys.path: demos/serve.py imports classifier), never a project room."""
    demos = {name: path for name, path in modules.items() if room(name) == "demos"}
    siblings = {name.split(".")[-1] for name in demos}
    rooms = {room(name) for name in modules} - {"demos"}
    bad = {name: sorted(found & (rooms | {"."})) for name, path in demos.items()
           if (found := demo_imports(path)) & (rooms | {"."})}
    assert not bad, f"a demo imports project code: {bad}"
    assert "classifier" in demo_imports(demos["demos.serve"]) and "classifier" in siblings
    assert demo_imports(ROOT / "main.py") & rooms  # the check would see an import of the project
