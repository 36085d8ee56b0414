"""The README documents every flag and keeps exactly the two set-up commands that CI relies on."""
from __future__ import annotations

import re

import config
from conftest import ROOT


def test_every_flag_is_documented():
    readme = (ROOT / "README.md").read_text()
    import argparse
    flags = {s for a in config.build_parser()._actions for s in a.option_strings
             if s.startswith("--") and a.help != argparse.SUPPRESS}
    missing = sorted(f for f in flags - {"--help"} if f"`{f}`" not in readme)
    assert not missing, f"flags missing from README.md: {missing}"


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    assert "bash z_task_shell/run_tests.sh" in readme and "bash z_task_shell/quickstart_digits.sh" in readme
    assert re.search(r"^bash z_task_shell/run_tests\.sh\s*$", (ROOT / ".ci/run").read_text(), re.M)
