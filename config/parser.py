"""The argument parser assembled from the shared groups and every mode's groups, and what it tells about the
config keys: their defaults, the mode that declares them, the ones a mode reads, the resume-safe ones."""
from __future__ import annotations

import argparse
import difflib
import functools
from pathlib import Path
from typing import Any, NoReturn, Sequence

from config.base import FlagGroup
from config.registry import MODE_REGISTRY, all_groups
from config.shared import MODEL, REPO_ROOT, SHARED_GROUPS, finite_float


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows a flag's default after its help, except where the help already says it, where there is none
    (None), and a path inside the repository, which is shown relative to it (as the user types it there)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if "default" in text.lower() or action.default is None or action.default is argparse.SUPPRESS:
            return text
        if isinstance(action.default, (str, Path)) and Path(action.default).is_absolute():
            try:
                shown = Path(action.default).relative_to(REPO_ROOT).as_posix()
            except ValueError:
                shown = str(action.default)
            return f"{text} (default: {shown.replace('%', '%%')}, in the repository)"
        return super()._get_help_string(action)


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors: ``main.py: error: WHAT`` and exit 2 (a usage error, as argparse),
    without the usage block that buried the message under 13-77 lines; a mistyped flag gets the nearest
    known ones, as a mistyped YAML key does."""

    help_mode: str | None = None  # the mode whose --help the message points to

    def error(self, message: str) -> NoReturn:  # type: ignore[override]
        """argparse's error (exit 2), with the nearest flag for a typo and the mode's --help to read."""
        mode = f" --{self.help_mode}" if self.help_mode else ""
        self.exit(2, f"{self.prog}: error: {message}{self._suggestion(message)} (see {self.prog}{mode} --help)\n")

    def _suggestion(self, message: str) -> str:
        if not message.startswith("unrecognized arguments:"):
            return ""
        known = [o for a in self._actions for o in a.option_strings if o.startswith("--")]
        hints = []
        for token in message.split(":", 1)[1].split():
            flag = token.split("=", 1)[0]
            near = difflib.get_close_matches(flag, known, n=3, cutoff=0.75) if flag.startswith("--") else []
            if near:
                hints.append(f"{flag}: did you mean {' or '.join(near)}?")
        return f"; {'; '.join(hints)}" if hints else ""


def build_parser(help_for: str | None = "all") -> argparse.ArgumentParser:
    """The argument parser with every flag of every mode (every config key), grouped for ``--help``.

    ``help_for``: "all" shows every flag; a mode name shows only what that mode reads (the shared groups,
    its own, and the flags it reads from other modes); None shows the modes and the shared groups.
    """
    p = Parser(
        prog="main.py",
        description="Image-classification playground: train, evaluate and more, from one entry point.",
        epilog="main.py --MODE --help lists the flags that mode reads (e.g. main.py --evaluation --help).",
        formatter_class=HelpFormatter,
    )
    p.help_mode = help_for if help_for in MODE_REGISTRY else None
    p.add_argument("--config", type=str, default=None,
                   help="YAML file whose keys set the defaults of these flags (command-line flags still win)")
    g = p.add_argument_group("mode (pick one)")
    for mode in MODE_REGISTRY.values():
        mode.add_flag(g)
    for group in all_groups():
        group.add(p.add_argument_group(group.title))
    for action in p._actions:  # every float flag, present and future, refuses inf, nan and overflow
        if action.type is float:
            action.type = finite_float
    if help_for != "all":
        shown = mode_reads(help_for) if help_for else group_dests(p, SHARED_GROUPS) | set(MODE_REGISTRY)
        for action in p._actions:
            if action.dest not in shown | {"help", "config"}:
                action.help = argparse.SUPPRESS
    return p


@functools.lru_cache(maxsize=1)
def flag_defaults() -> dict[str, Any]:
    """Each config key's default when neither a flag nor a YAML file sets it (lists for tuples)."""
    return {a.dest: (list(a.default) if isinstance(a.default, tuple) else a.default)
            for a in build_parser()._actions if a.dest not in ("help", "config")}


def group_dests(parser: argparse.ArgumentParser, groups: Sequence[FlagGroup]) -> set[str]:
    """The config keys (``dest``) that ``groups`` declare in ``parser``."""
    titles = {g.title for g in groups}
    return {a.dest for g in parser._action_groups if g.title in titles for a in g._group_actions}


def mode_reads(mode: str) -> set[str]:
    """The config keys ``--mode`` reads: the shared groups', its own groups', the single flags it borrows,
    and its own mode flag."""
    spec = MODE_REGISTRY[mode]
    return group_dests(build_parser(), (*SHARED_GROUPS, *spec.groups)) | set(spec.flags) | {mode, "config"}


def flag_owner(dest: str) -> str | None:
    """The mode whose groups declare config key ``dest`` (the first in --help order), or None for a shared key."""
    parser = build_parser()
    for mode in MODE_REGISTRY.values():
        if dest == mode.name or dest in group_dests(parser, mode.groups):
            return mode.name
    return None


def resume_safe_keys() -> frozenset[str]:
    """Keys that may differ when a run is resumed in the same run directory: the mode flags and the keys of
    groups marked ``resume_safe`` (how to run: workers, device, output, evaluation and export options, ...).
    The others (the model, the data, the training recipe) are refused when they differ from the saved
    config.yaml (``config_conflicts``)."""
    parser = build_parser()
    return frozenset({"config", *MODE_REGISTRY, *group_dests(parser, [g for g in all_groups() if g.resume_safe])})


# The keys that define the model: architecture, classes, input size, preprocessing and head (the model group).
MODEL_IDENTITY_KEYS: tuple[str, ...] = tuple(sorted(group_dests(build_parser(), (MODEL,))))
RESUME_SAFE_KEYS = resume_safe_keys()


def actions_by_dest(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """Config key -> the parser's action that sets it (the first, when several flags share a key)."""
    actions = {}
    for action in parser._actions:  # argparse offers no public accessor
        if action.dest != "help" and action.dest not in actions:
            actions[action.dest] = action
    return actions


def flag_name(action: argparse.Action) -> str:
    """The flag users type for ``action``: its first long option (``--lr``), else its first option or key."""
    longs = [s for s in action.option_strings if s.startswith("--")]
    return (longs or action.option_strings or [action.dest])[0]


def flags_to_argv(parser: argparse.ArgumentParser, values: dict[str, Any]) -> list[str]:
    """Command-line flags that set ``values`` (config keys -> values); the inverse of parsing them.
    A false switch and a None value are left out (they are the defaults)."""
    actions = actions_by_dest(parser)
    argv: list[str] = []
    for dest, value in values.items():
        action = actions[dest]
        flag = flag_name(action)
        if value is None or value is False:
            continue
        if isinstance(action, argparse._StoreTrueAction):
            argv.append(flag)
        elif isinstance(value, (list, tuple)):
            argv += [flag, *(str(v) for v in value)]
        else:
            argv += [flag, str(value)]
    return argv
