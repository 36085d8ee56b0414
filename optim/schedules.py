"""Learning-rate schedules as pure functions of the optimizer step: ``factor = f(step)``.

The factor multiplies the peak LR. Warm-up is linear over the first ``warmup_steps`` steps; the
schedule then runs over the remaining steps:

* ``step``: factor 1, 0.1, 0.01, 0.001, switching at 1.5/4, 2.5/4 and 3.5/4 of the steps after warm-up;
* ``cosine``: half a cosine from 1 to 0.
"""
from __future__ import annotations

import functools
import math
from typing import Callable

import torch

STEP_BOUNDARIES = (1.5 / 4, 2.5 / 4, 3.5 / 4)


def warmup_factor(step: int, warmup_steps: int) -> float:
    """Linear warm-up: ``(step + 1) / warmup_steps`` for the first ``warmup_steps`` steps."""
    return min(1.0, (step + 1) / warmup_steps) if warmup_steps > 0 else 1.0


def step_factor(progress: float) -> float:
    """The step schedule at ``progress`` in [0, 1] of the post-warm-up steps."""
    return 0.1 ** sum(progress >= b for b in STEP_BOUNDARIES)


def cosine_factor(progress: float) -> float:
    """Half a cosine from 1 at progress 0 to 0 at progress 1."""
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


SCHEDULES: dict[str, Callable[[float], float]] = {"step": step_factor, "cosine": cosine_factor}


def lr_factor(step: int, *, total_steps: int, warmup_steps: int = 0, schedule: str = "cosine") -> float:
    """LR factor at optimizer step ``step`` of ``total_steps``."""
    if step < warmup_steps:
        return warmup_factor(step, warmup_steps)
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return SCHEDULES[schedule](progress)


def create_scheduler(optimizer: torch.optim.Optimizer, *, schedule: str, total_steps: int,
                     warmup_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """A ``LambdaLR`` stepping once per optimizer step; its state is just the step count."""
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r}; choose from {', '.join(SCHEDULES)}")
    fn = functools.partial(lr_factor, total_steps=total_steps, warmup_steps=warmup_steps, schedule=schedule)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, fn)
