"""The base types of the flag declarations: ``FlagGroup``, ``Mode``, ``ConfigError`` and the checks' helpers.

They import nothing heavy, so that ``config`` can assemble the parser without importing torch (``main.py
--help`` stays instant), and nothing else of ``config``: each ``config/modes/<mode>.py`` imports this module,
never the ``config`` package (whose ``__init__`` imports the modes).

A mode (``Mode``) names the flag groups it reads; a group (``FlagGroup``) adds its flags to an argparse
group and checks their values. ``config`` holds the shared groups (data, model, run) and the registry
of modes; each module of ``config/modes/`` declares the groups and the modes of one ``applications/<mode>.py``.
Value checks are pure (no file is read while parsing); the checks that look at files (``--resume``
exists, teacher files, ...) are a mode's ``check_files``, run by ``main.py`` after parsing, before the
mode runs.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

# A value check: raises ConfigError. A file check also gets the config keys the user set (flag or YAML).
Check = Callable[[argparse.Namespace], None]
FileCheck = Callable[[argparse.Namespace, "set[str]"], None]


class ConfigError(ValueError):
    """A flag or config value is invalid; the message names the flag, the value and what is allowed."""


def need(cond: bool, msg: str) -> None:
    """Raise ConfigError(msg) unless ``cond``."""
    if not cond:
        raise ConfigError(msg)


def need_probability(cfg: argparse.Namespace, *flags: str) -> None:
    """Each of ``flags`` is a probability in [0, 1]."""
    for flag in flags:
        value = getattr(cfg, flag)
        need(0 <= value <= 1, f"--{flag} must be a probability in [0, 1], got {value}")


def need_file(path: str | None, flag: str, what: str = "file", hint: str = "") -> None:
    """``path`` (when given) is an existing file; else a ConfigError naming the flag."""
    need(path is None or Path(path).is_file(), f"--{flag}: {what} {path!r} does not exist{hint}")


@dataclass(frozen=True)
class FlagGroup:
    """Flags shown together in ``--help``, with the checks of their values.

    ``resume_safe``: the flags may change when a training run is resumed in its run directory (they say
    how to run, not what is trained: workers, device, output, ...); the others define the model, the data
    or the training and are refused when they differ from the saved config.yaml.
    """
    title: str
    add: Callable[[argparse._ArgumentGroup], None]
    check: Check | None = None
    check_files: FileCheck | None = None
    resume_safe: bool = False


@dataclass(frozen=True)
class Mode:
    """One mode of ``main.py``: its flag (``--<name>``), the module whose ``run(cfg)`` runs it, the groups
    it reads besides the shared ones, single flags it reads from other modes' groups, and its checks."""
    name: str
    run: str
    add_flag: Callable[[argparse._ArgumentGroup], None]
    groups: tuple[FlagGroup, ...] = ()
    flags: tuple[str, ...] = ()
    needs_checkpoint: bool = False
    check: Check | None = None
    check_files: FileCheck | None = None
    reads_labels: bool = True  # its data's labels (read as a checkpoint's task says: config.saved.use_checkpoint_task)
    # the checkpoint whose data and task the mode uses when --data is not given, if not --resume (--average's)
    data_checkpoint: Callable[[argparse.Namespace], str] | None = None
