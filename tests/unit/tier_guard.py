"""The unit tier's rule, checked around every test in tests/unit: no end-to-end training.

A unit test may build tiny models, run a step or an epoch of the loops on a handful of images, and call
``main.py`` modes that refuse their input or do not train. It may not start a training process
(``main.py --train`` or ``--sweep``, torchrun, a z_task_shell recipe), run a training mode in its own
process to its end, or spend more than ``CPU_BUDGET_S`` CPU seconds (itself and the child processes it
waited for); such a test belongs in tests/e2e. CPU seconds rather than wall seconds: on a machine
shared with other jobs the wall clock of a unit test stretches, its CPU time much less.
"""
from __future__ import annotations

import importlib
import os
import resource
import sys
from pathlib import Path
from typing import Any, Iterable

CPU_BUDGET_S = 30.0
TRAINING_MODES = ("train", "sweep")
TRAINING_FLAGS = tuple(f"--{m}" for m in TRAINING_MODES)
_MOVE = "a test that trains end to end belongs in tests/e2e"


# The audit events that start a program, and where their arguments hold its command line.
_COMMAND_LINES = {
    "subprocess.Popen": lambda a: a[1] if a[1] is not None else a[0],  # (executable, args, cwd, env)
    "os.system": lambda a: a[0],  # (command,)
    "os.posix_spawn": lambda a: a[1],  # (path, argv, env)
    "os.exec": lambda a: a[1],  # (path, args, env)
    "os.spawn": lambda a: a[2],  # (mode, path, args, env)
}


class EndToEndTraining(RuntimeError):
    """Raised where a unit test starts a training process (the process is not started)."""


def training_command(argv: str | bytes | os.PathLike | Iterable[Any]) -> str | None:
    """What end-to-end training a child process with command line ``argv`` runs, or None.
    ``argv`` is what ``subprocess.Popen`` got: a list, or one string for ``shell=True``."""
    if isinstance(argv, (str, bytes, os.PathLike)):
        words = os.fsdecode(argv).split()
    else:
        words = [os.fsdecode(w) if isinstance(w, (str, bytes, os.PathLike)) else str(w) for w in argv]
    names = [Path(w).name for w in words]
    if "torchrun" in names or "torch.distributed.run" in words:
        return "torchrun"
    flags = [w for w in words if w in TRAINING_FLAGS]
    if "main.py" in names and flags:
        return f"main.py {flags[0]}"
    recipes = [w for w in words if w.endswith(".sh") and Path(w).parent.name == "z_task_shell"]
    if recipes:
        return f"the recipe {Path(recipes[0]).name}"
    return None


def cpu_seconds() -> float:
    """User + system CPU seconds of this process and of its children that were waited for."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


class TrainingGuard:
    """Watches one test (``with TrainingGuard() as guard: ...``) and lists in ``guard.violations`` what it
    did against the rule. Guards nest: only the innermost sees the events, so a test can check the guard
    inside the guard that watches it."""

    _active: list["TrainingGuard"] = []
    _installed = False

    def __init__(self, cpu_budget_s: float = CPU_BUDGET_S) -> None:
        self.cpu_budget_s = cpu_budget_s
        self.violations: list[str] = []
        self._patched: list[tuple[Any, Any]] = []

    def __enter__(self) -> "TrainingGuard":
        if not TrainingGuard._installed:  # an audit hook cannot be removed: one for the process, routed below
            sys.addaudithook(TrainingGuard._audit)
            TrainingGuard._installed = True
        self._cpu = cpu_seconds()
        self._patch_training_modes()
        TrainingGuard._active.append(self)
        return self

    def __exit__(self, *exc: Any) -> None:
        TrainingGuard._active.remove(self)
        for module, run in reversed(self._patched):
            module.run = run
        spent = cpu_seconds() - self._cpu
        if spent > self.cpu_budget_s:
            self.violations.append(f"it took {spent:.1f} CPU seconds, over the unit tier's {self.cpu_budget_s:.1f}")

    def _patch_training_modes(self) -> None:
        """Each training mode's ``run`` (what main.py calls) notes when it returns, i.e. trained to its end."""
        from config import MODES
        for mode in TRAINING_MODES:
            module = importlib.import_module(MODES[mode])
            real = module.run

            def run(cfg, _real=real, _mode=mode):
                result = _real(cfg)
                self._note(f"it ran main.py --{_mode} in its own process to the end")
                return result

            self._patched.append((module, real))
            module.run = run

    def _note(self, what: str) -> None:
        if TrainingGuard._active and TrainingGuard._active[-1] is self:
            self.violations.append(what)

    @staticmethod
    def _audit(event: str, args: tuple) -> None:
        if not TrainingGuard._active or event not in _COMMAND_LINES:
            return
        what = training_command(_COMMAND_LINES[event](args))
        if what:
            message = f"it started {what}"
            TrainingGuard._active[-1].violations.append(message)
            raise EndToEndTraining(f"tests/unit: {message}; {_MOVE}")

    def report(self) -> str | None:
        """The one-line failure message for what the test did, or None when it kept the rule."""
        if not self.violations:
            return None
        violations = "; ".join(dict.fromkeys(self.violations))
        return f"tests/unit is for tests without end-to-end training, but {violations}: {_MOVE}"
