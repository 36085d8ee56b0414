"""The tests' own layout: shared helpers come from tests/helpers.py (fixtures from the conftest.py files), so no
test module imports another test module or a conftest, and pytest.ini (not sys.path.insert) sets the path."""
from __future__ import annotations

import ast
from pathlib import Path

from helpers import ROOT

TESTS = ROOT / "tests"


def _imported_modules(tree: ast.AST) -> list[tuple[int, str]]:
    """Every module an import statement names, at any depth (imports inside functions count too)."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.append((node.lineno, node.module))
    return found


def layout_problems(folder: Path) -> list[str]:
    """``file:line what`` for each import of a ``test_*`` module or a conftest, and each ``sys.path.insert``."""
    problems = []
    for path in sorted(folder.rglob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        where = path.relative_to(folder)
        for line, module in _imported_modules(tree):
            last = module.split(".")[-1]
            if last.startswith("test_") or last == "conftest":
                problems.append(f"{where}:{line} imports {module}")
        for node in ast.walk(tree):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "insert"
                    and ast.unparse(node.func.value) == "sys.path"):
                problems.append(f"{where}:{node.lineno} calls sys.path.insert")
    return problems


def test_no_test_module_imports_another_or_a_conftest_and_none_edits_sys_path():
    assert layout_problems(TESTS) == [], "move shared helpers to tests/helpers.py; pytest.ini sets pythonpath"


def test_pytest_ini_puts_the_root_and_tests_on_the_path():
    lines = [line.split("=", 1) for line in (ROOT / "pytest.ini").read_text().splitlines() if "=" in line]
    assert {key.strip(): value.split() for key, value in lines}["pythonpath"] == [".", "tests"]


def test_the_check_sees_each_kind_of_problem(tmp_path):
    (tmp_path / "test_a.py").write_text("import sys\nfrom unit.test_b import helper\n"
                                        "def f():\n    from conftest import ROOT\n    sys.path.insert(0, '.')\n")
    (tmp_path / "test_c.py").write_text("import e2e.test_d\nfrom helpers import ROOT\nfrom unit.tier_guard import x\n")
    assert layout_problems(tmp_path) == ["test_a.py:2 imports unit.test_b", "test_a.py:4 imports conftest",
                                         "test_a.py:5 calls sys.path.insert", "test_c.py:1 imports e2e.test_d"]


def test_a_passing_tests_tmp_path_is_deleted_so_the_suite_fits_on_a_small_disk(request):
    """Kept, every test's tmp_path adds up to about 15 GB over the suite (checkpoints, exports, datasets): CI's
    disk filled at 96% (stop 34). pytest.ini's policy deletes a passing test's folder as it ends."""
    assert request.config.getini("tmp_path_retention_policy") == "failed"
