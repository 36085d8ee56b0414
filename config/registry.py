"""The registry of modes: every ``Mode`` that ``config/modes/`` declares, in ``--help`` order."""
from __future__ import annotations

import argparse

from config.base import FlagGroup, Mode
from config.modes import (
    average,
    calibrate,
    compare,
    convert,
    curriculum,
    evaluation,
    features,
    knowledge,
    lr_finder,
    model_tools,
    predict,
    sweep,
    train,
    visualize,
)
from config.shared import SHARED_GROUPS

# Every mode, in --help order: its flag, the module that runs it, the groups it reads (a registry that
# each config/modes/<module>.py fills for its own modes).
MODE_REGISTRY: dict[str, Mode] = {m.name: m for module in (train, evaluation, calibrate, knowledge, curriculum,
                                                           lr_finder, convert, features, predict, visualize,
                                                           model_tools, average, compare, sweep)
                                  for m in module.MODES}
# Mode flags: the dest of each mode flag and the application module that runs it.
MODES: dict[str, str] = {name: m.run for name, m in MODE_REGISTRY.items()}
# Modes that run a trained checkpoint and so need --resume.
CHECKPOINT_MODES = tuple(name for name, m in MODE_REGISTRY.items() if m.needs_checkpoint)


def all_groups() -> list[FlagGroup]:
    """The shared groups, then every mode's groups once each, in --help order."""
    groups: list[FlagGroup] = list(SHARED_GROUPS)
    for mode in MODE_REGISTRY.values():
        groups += [g for g in mode.groups if g not in groups]
    return groups


def selected_mode(cfg: argparse.Namespace) -> str | None:
    """The mode flag that is set, or None."""
    for mode in MODES:
        if getattr(cfg, mode, False):
            return mode
    return None
