"""docs/flags.md is the parser's flag reference, regenerated with ``python config.py``."""
from __future__ import annotations

import argparse

import config
from conftest import ROOT


def test_committed_flag_docs_are_current():
    assert (ROOT / "docs" / "flags.md").read_text() == config.flag_reference(), \
        "docs/flags.md is out of date: run python config.py"


def test_flag_docs_list_every_flag_under_every_mode():
    text = config.flag_reference()
    flags = {s for a in config.build_parser()._actions for s in a.option_strings
             if s.startswith("--") and a.help != argparse.SUPPRESS}
    assert not sorted(f for f in flags - {"--help"} if f"`{f}`" not in text)
    for mode in config.MODES:
        assert f"\n## --{mode}\n" in text, mode
    assert str(config.REPO_ROOT) not in text  # the same page in every checkout
