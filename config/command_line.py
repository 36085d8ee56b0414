"""Parsing the command line (and ``--config`` YAML defaults) into one validated, resolved config, and the
selected mode's checks: the value checks while parsing, the file checks (``check_files``) after."""
from __future__ import annotations

import argparse
import sys
from typing import Any, Sequence

from config.base import ConfigError, need
from config.parser import actions_by_dest, build_parser, flag_name, flag_owner, mode_reads
from config.registry import MODE_REGISTRY, MODES, all_groups, selected_mode
from config.saved import use_checkpoint_data
from config.shared import PACKAGE_KEYS, PREPROCESSING_KEYS, PRETRAINED_MODES, SHARED_GROUPS, check_label_sets
from config.yaml_values import load_yaml_defaults
from utils.weights_name import is_package_ref, is_weights_name


def check_one_mode(cfg: argparse.Namespace) -> list[str]:
    """At most one mode flag is set; returns the ones set."""
    modes = [m for m in MODES if getattr(cfg, m, False)]
    need(len(modes) <= 1, f"pick one mode, got {', '.join('--' + m for m in modes)}")
    return modes


def validate(cfg: argparse.Namespace) -> None:
    """Check value ranges and combinations; raise ConfigError naming the flag and what is allowed.

    Every group checks its values whatever the mode (a value is valid or not wherever it came from), then
    the selected mode checks what it needs (``--resume`` for the modes that run a checkpoint, ...)."""
    modes = check_one_mode(cfg)
    for group in all_groups():
        if group.check is not None:
            group.check(cfg)
    if modes:
        spec = MODE_REGISTRY[modes[0]]
        if spec.needs_checkpoint:
            need(cfg.resume is not None, f"--{spec.name} needs a checkpoint: add --resume PATH/TO/best.pth")
        if spec.check is not None:
            spec.check(cfg)


def check_files(cfg: argparse.Namespace, given: set[str]) -> None:
    """The selected mode's checks that look at files (``--resume`` exists, teacher files, ...) and its use
    of them (the data a checkpoint was trained on); ``given``: the keys set by flags or the YAML file.
    Not part of parsing: ``main.py`` runs them before the mode, so that the parser reads no file."""
    mode = selected_mode(cfg)
    if mode is None:
        return
    spec = MODE_REGISTRY[mode]
    for group in (*SHARED_GROUPS, *spec.groups):
        if group.check_files is not None:
            group.check_files(cfg, given)
    if spec.needs_checkpoint or spec.data_checkpoint is not None:
        use_checkpoint_data(cfg, given, task=spec.reads_labels,
                            checkpoint=spec.data_checkpoint(cfg) if spec.data_checkpoint else None)
        check_label_sets(cfg)  # again: a multi-label checkpoint may have set --multi_label just now
    if spec.check_files is not None:
        spec.check_files(cfg, given)


def _help_requested(argv: Sequence[str]) -> str | None:
    """With -h/--help in ``argv``: the mode whose help to show ("" for none); else None."""
    if not any(a in ("-h", "--help") for a in argv):
        return None
    return next((m for m in MODE_REGISTRY if f"--{m}" in argv), "")


def parse_command_line(argv: Sequence[str] | None = None) -> tuple[argparse.Namespace, set[str]]:
    """Parse flags (and ``--config`` YAML defaults) into a validated, resolved config; also return the keys
    the user set (by flag or YAML), which ``check_files`` needs. ``--MODE --help`` prints that mode's flags."""
    argv = list(sys.argv[1:] if argv is None else argv)
    help_mode = _help_requested(argv)
    if help_mode is not None:
        build_parser(help_mode or None).parse_args(["--help"])
    parser = build_parser()
    pre, _ = parser.parse_known_args(argv)
    yaml_defaults: dict[str, Any] = {}
    if pre.config:
        try:
            yaml_defaults = load_yaml_defaults(parser, pre.config)
        except ConfigError as e:
            parser.error(str(e))
        parser.set_defaults(**yaml_defaults)
    cfg = parser.parse_args(argv)
    on_command_line = given_on_command_line(argv)
    try:
        # flags the mode does not read are named before any value check reads them (--knowledge --epochs 1
        # is "ignores training options", not the warm-up rule)
        check_one_mode(cfg)
        check_mode_flags(cfg, on_command_line)
        validate(cfg)
    except ConfigError as e:
        build_parser(selected_mode(cfg)).error(str(e))  # the usage line of the mode's own flags
    given = on_command_line | set(yaml_defaults)
    defer_preprocessing(cfg, given)
    return cfg, given


def parse_config(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse flags (and ``--config`` YAML defaults) into a validated, resolved config (no file checks:
    see ``check_files``)."""
    return parse_command_line(argv)[0]


def check_mode_flags(cfg: argparse.Namespace, on_command_line: set[str]) -> None:
    """Refuse flags given on the command line with a mode that does not read them (its groups do not hold
    them) rather than drop them silently. YAML keys are not refused: the config.yaml of a training run
    passed to --evaluation is fine."""
    mode = selected_mode(cfg)
    if mode is None:
        return
    actions = actions_by_dest(build_parser())
    by_owner: dict[str, list[str]] = {}
    for dest in sorted(on_command_line - mode_reads(mode)):
        by_owner.setdefault(flag_owner(dest) or "", []).append(flag_name(actions[dest]))
    problems = []
    for owner, flags in sorted(by_owner.items(), key=lambda item: item[0] != "train"):
        listed, one = ", ".join(sorted(flags)), len(flags) == 1
        if owner == "train":
            problems.append(f"--{mode} ignores training options, but the command line gives {listed}: "
                            f"drop {'it' if one else 'them'}, or train with --train")
        else:
            problems.append(f"{listed} {'is a' if one else 'are'} --{owner} option{'' if one else 's'} that --{mode} "
                            f"does not read: drop {'it' if one else 'them'}, or run --{owner}")
    if problems:
        raise ConfigError("; ".join(problems))


def defer_preprocessing(cfg: argparse.Namespace, given: set[str]) -> None:
    """With named ``--pretrained`` weights, the preprocessing keys not set (flag or YAML) become None: the
    weights' own values fill them (``applications.setup.common.apply_weights_preprocessing``), not the defaults;
    a package's (``hf-hub:``/``local-dir:``) input size too."""
    if is_weights_name(cfg.pretrained) and selected_mode(cfg) in PRETRAINED_MODES:
        for key in PACKAGE_KEYS if is_package_ref(cfg.pretrained) else PREPROCESSING_KEYS:
            if key not in given:
                setattr(cfg, key, None)


def given_on_command_line(argv: Sequence[str] | None) -> set[str]:
    """The config keys set by flags on the command line (not by defaults)."""
    parser = build_parser()
    for action in parser._actions:
        action.default = argparse.SUPPRESS
    return set(vars(parser.parse_known_args(argv)[0]))
