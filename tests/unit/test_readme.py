"""The README keeps exactly the two set-up commands that CI relies on."""
from __future__ import annotations

import re

from conftest import ROOT


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    assert "bash z_task_shell/run_tests.sh" in readme and "bash z_task_shell/quickstart_digits.sh" in readme
    assert re.search(r"^bash z_task_shell/run_tests\.sh\s*$", (ROOT / ".ci/run").read_text(), re.M)
