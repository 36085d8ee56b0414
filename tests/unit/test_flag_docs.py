"""docs/flags.md is the parser's flag reference, regenerated with ``python -m config``."""
from __future__ import annotations

import argparse
import subprocess
import sys

import config
from helpers import ROOT


def test_committed_flag_docs_are_current():
    assert (ROOT / "docs" / "flags.md").read_text() == config.flag_reference(), \
        "docs/flags.md is out of date: run python -m config"


def test_flag_docs_list_every_flag_under_every_mode():
    text = config.flag_reference()
    flags = {s for a in config.build_parser()._actions for s in a.option_strings
             if s.startswith("--") and a.help != argparse.SUPPRESS}
    assert not sorted(f for f in flags - {"--help"} if f"`{f}`" not in text)
    for mode in config.MODES:
        assert f"\n## --{mode}\n" in text, mode
    assert str(config.REPO_ROOT) not in text  # the same page in every checkout


def test_python_m_config_writes_the_reference(tmp_path):
    out = tmp_path / "flags.md"
    r = subprocess.run([sys.executable, "-m", "config", str(out)], cwd=ROOT, capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    assert out.read_text() == config.flag_reference() and r.stdout.strip() == str(out)
