"""The README keeps exactly the two set-up commands that CI relies on, and the test command lints before it tests."""
from __future__ import annotations

import re

from helpers import ROOT


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    assert "bash z_task_shell/run_tests.sh" in readme and "bash z_task_shell/quickstart_digits.sh" in readme
    assert re.search(r"^bash z_task_shell/run_tests\.sh\s*$", (ROOT / ".ci/run").read_text(), re.M)


def test_the_test_command_runs_the_pinned_linter_after_install_and_before_pytest():
    lines = [line.strip() for line in (ROOT / "z_task_shell/run_tests.sh").read_text().splitlines()
             if line.strip() and not line.lstrip().startswith("#")]
    install = lines.index("bash z_task_shell/install.sh")
    lint = lines.index(".venv/bin/ruff check .")
    pytest_line = next(i for i, line in enumerate(lines) if "-m pytest" in line)
    assert install < lint < pytest_line
    assert "ruff==" in (ROOT / "requirements.txt").read_text() and (ROOT / "ruff.toml").is_file()
