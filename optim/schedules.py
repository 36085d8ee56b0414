"""Learning-rate schedules as pure functions of the optimizer step: ``factor = f(step)``.

The factor multiplies the peak LR. Warm-up is linear over the first ``warmup_steps`` steps; the
schedule then maps ``progress`` in [0, 1] over the remaining steps to a factor:

* ``step``: 1, 0.1, 0.01, 0.001, switching at 1.5/4, 2.5/4 and 3.5/4 of the post-warm-up steps
  (or at ``milestones`` when given, like ``multistep``);
* ``multistep``: ``ratios[k]`` from milestone k on (milestones are absolute steps, ratios are
  factors of the peak LR, default 0.1, 0.01, ...);
* ``cosine``: half a cosine from 1 to 0;
* ``poly``: ``(1 - progress) ** power``;
* ``onecycle``: Smith's one-cycle as in ``torch.optim.lr_scheduler.OneCycleLR`` (cosine from
  1/div_factor up to 1 over ``pct_start``, then down to 1/(div_factor * final_div_factor)).
"""
from __future__ import annotations

import bisect
import functools
import math
from typing import Sequence

import torch

STEP_BOUNDARIES = (1.5 / 4, 2.5 / 4, 3.5 / 4)
SCHEDULES = ("step", "multistep", "cosine", "poly", "onecycle")


def warmup_factor(step: int, warmup_steps: int) -> float:
    """Linear warm-up: ``(step + 1) / warmup_steps`` for the first ``warmup_steps`` steps."""
    return min(1.0, (step + 1) / warmup_steps) if warmup_steps > 0 else 1.0


def step_factor(progress: float) -> float:
    """The default step schedule at ``progress`` in [0, 1] of the post-warm-up steps."""
    return 0.1 ** sum(progress >= b for b in STEP_BOUNDARIES)


def multistep_factor(step: int, milestones: Sequence[int], ratios: Sequence[float] | None = None) -> float:
    """``ratios[k]`` once ``step`` has reached ``milestones[k]`` (1 before the first milestone)."""
    k = bisect.bisect_right(list(milestones), step)
    if k == 0:
        return 1.0
    return float(ratios[k - 1]) if ratios else 0.1 ** k


def cosine_factor(progress: float) -> float:
    """Half a cosine from 1 at progress 0 to 0 at progress 1."""
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def poly_factor(progress: float, power: float = 0.9) -> float:
    """Polynomial decay ``(1 - progress) ** power``."""
    return max(0.0, 1.0 - progress) ** power


def _cos_anneal(start: float, end: float, pct: float) -> float:
    return end + (start - end) / 2.0 * (math.cos(math.pi * pct) + 1)


def onecycle_factor(step: int, total_steps: int, pct_start: float = 0.3, div_factor: float = 25.0,
                    final_div_factor: float = 1e4) -> float:
    """One-cycle (two-phase, cosine) exactly as ``torch.optim.lr_scheduler.OneCycleLR`` computes it."""
    initial, final = 1.0 / div_factor, 1.0 / (div_factor * final_div_factor)
    up_end = float(pct_start * total_steps) - 1
    down_end = float(total_steps) - 1
    if step <= up_end:
        return _cos_anneal(initial, 1.0, step / up_end if up_end > 0 else 1.0)
    return _cos_anneal(1.0, final, min(1.0, (step - up_end) / max(1e-12, down_end - up_end)))


def lr_factor(step: int, *, total_steps: int, warmup_steps: int = 0, schedule: str = "cosine",
              milestones: Sequence[int] | None = None, ratios: Sequence[float] | None = None,
              power: float = 0.9, pct_start: float = 0.3) -> float:
    """LR factor at optimizer step ``step`` of ``total_steps``."""
    if step < warmup_steps:
        return warmup_factor(step, warmup_steps)
    if schedule == "multistep" or (schedule == "step" and milestones):
        return multistep_factor(step, milestones or [], ratios)
    if schedule == "onecycle":
        return onecycle_factor(step - warmup_steps, total_steps - warmup_steps, pct_start=pct_start)
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    if schedule == "step":
        return step_factor(progress)
    if schedule == "cosine":
        return cosine_factor(progress)
    if schedule == "poly":
        return poly_factor(progress, power)
    raise ValueError(f"unknown schedule {schedule!r}; choose from {', '.join(SCHEDULES)}")


def create_scheduler(optimizer: torch.optim.Optimizer, *, schedule: str, total_steps: int, warmup_steps: int,
                     milestones: Sequence[int] | None = None, ratios: Sequence[float] | None = None,
                     power: float = 0.9, pct_start: float = 0.3) -> torch.optim.lr_scheduler.LambdaLR:
    """A ``LambdaLR`` stepping once per optimizer step; its state is just the step count."""
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r}; choose from {', '.join(SCHEDULES)}")
    if schedule == "multistep" and not milestones:
        raise ValueError("the multistep schedule needs milestones (--lr_steps)")
    if ratios is not None and milestones is not None and len(ratios) != len(milestones):
        raise ValueError(f"--lr_ratios has {len(ratios)} values but --lr_steps has {len(milestones)}")
    fn = functools.partial(lr_factor, total_steps=total_steps, warmup_steps=warmup_steps, schedule=schedule,
                           milestones=list(milestones) if milestones else None,
                           ratios=list(ratios) if ratios else None, power=power, pct_start=pct_start)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, fn)
