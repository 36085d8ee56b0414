"""The flag reference, ``docs/flags.md``, generated from the parser (``python -m config`` writes it)."""
from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Sequence

from config.parser import actions_by_dest, build_parser, flag_name, flag_owner
from config.registry import MODE_REGISTRY
from config.shared import REPO_ROOT, SHARED_GROUPS
from utils.atomic import write_text_atomic

FLAG_DOCS = REPO_ROOT / "docs" / "flags.md"


def _doc_default(action: argparse.Action) -> str:
    default = action.default
    if isinstance(action, argparse._StoreTrueAction) or default is None:
        return "off" if isinstance(action, argparse._StoreTrueAction) else ""
    if isinstance(default, str) and default.startswith(str(REPO_ROOT) + os.sep):
        default = os.path.relpath(default, REPO_ROOT)  # the same page in every checkout
    return " ".join(map(str, default)) if isinstance(default, (list, tuple)) else str(default)


def _doc_table(actions: Sequence[argparse.Action]) -> list[str]:
    rows = ["| flag | default | help |", "|---|---|---|"]
    for a in actions:
        names = ", ".join(f"`{s}`" for s in a.option_strings)
        text = (a.help or "").replace("%%", "%").replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")
        rows.append(f"| {names} | {_doc_default(a).replace('|', ' ')} | {text} |")
    return rows


def flag_reference() -> str:
    """The flag reference (``docs/flags.md``): the shared flags, then one section per mode with the flags
    it reads (a group shared by several modes is listed under the first and referred to by the others)."""
    parser = build_parser()
    actions = {g.title: [a for a in g._group_actions if a.help != argparse.SUPPRESS] for g in parser._action_groups}
    by_dest = actions_by_dest(parser)
    lines = ["# Flags of main.py", "",
             "Generated from the parser by `python -m config` (tests/unit/test_flag_docs.py checks that it is "
             "current). "
             "`main.py --MODE --help` prints the same for one mode; a flag that a mode does not read is refused "
             "when given with it on the command line (keys of a `--config` YAML file are not).", "",
             "## Shared flags (every mode)", "", *_doc_table([by_dest["config"]]), ""]
    for group in SHARED_GROUPS:
        lines += [f"### {group.title}", "", *_doc_table(actions[group.title]), ""]
    listed: dict[str, str] = {}
    for mode in MODE_REGISTRY.values():
        lines += [f"## --{mode.name}", "", *_doc_table([by_dest[mode.name]]), ""]
        for group in mode.groups:
            if group.title in listed:
                lines += [f"Reads the *{group.title}* flags (see `--{listed[group.title]}`).", ""]
            else:
                listed[group.title] = mode.name
                lines += [f"### {group.title}", "", *_doc_table(actions[group.title]), ""]
        if mode.flags:
            lines += ["Also reads: " + ", ".join(f"`{flag_name(by_dest[d])}` (see `--{flag_owner(d)}`)"
                                                 for d in mode.flags) + ".", ""]
    return "\n".join(lines).rstrip() + "\n"


def write_flag_docs(path: str | Path = FLAG_DOCS) -> Path:
    """Write ``flag_reference()`` to ``path`` (default ``docs/flags.md``)."""
    return write_text_atomic(path, flag_reference())
