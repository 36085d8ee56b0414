"""Functions stay short enough to read at a glance: none in applications/, engine/ or config over 80 lines,
and ``--train``'s ``_train`` a table of contents (pycls's ``train_model``) of at most 60."""
from __future__ import annotations

import ast
from pathlib import Path

from helpers import ROOT

LIMIT = 80
TRAIN_LIMIT = 60
FOLDERS = ("applications", "engine", "config")


def _sources() -> list[Path]:
    return [p for folder in FOLDERS for p in sorted((ROOT / folder).rglob("*.py"))]


def function_sizes(path: Path) -> dict[str, int]:
    """``name@line`` -> lines from ``def`` to the function's last line, for every function in ``path``."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return {f"{node.name}@{node.lineno}": node.end_lineno - node.lineno + 1 for node in ast.walk(tree)
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))}


def test_the_check_sees_the_projects_functions():
    seen = {p.relative_to(ROOT).as_posix() for p in _sources()}
    assert {"applications/train.py", "engine/loops.py", "config/parser.py", "config/modes/train.py"} <= seen
    assert len(_sources()) > 20


def test_no_function_is_over_80_lines():
    over = [f"{path.relative_to(ROOT)}: {name} has {size} lines" for path in _sources()
            for name, size in function_sizes(path).items() if size > LIMIT]
    assert not over, f"split these into named steps (at most {LIMIT} lines each): " + "; ".join(over)


def test_train_reads_like_a_table_of_contents():
    sizes = {name.split("@")[0]: size for name, size in function_sizes(ROOT / "applications/train.py").items()}
    assert sizes["_train"] <= TRAIN_LIMIT, f"_train has {sizes['_train']} lines (at most {TRAIN_LIMIT})"
