"""Early stopping (``--patience N [--min_delta D]``): stop when the eval metric has not improved for N epochs.

As Keras's and Lightning's ``EarlyStopping``: an epoch improves when its value beats the best so far by more
than ``min_delta`` (in the metric's units: percentage points, or the loss's own); the best moves only then, so
many small steps that each stay within ``min_delta`` still count as no improvement. The counter is part of the
checkpoint (``state_dict``), so a run killed and resumed stops at the epoch an uninterrupted one stops at.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from utils.eval_metric import EvalMetric, is_better


@dataclass
class EarlyStopping:
    """The counter of epochs without improvement; ``patience`` 0 counts but never stops."""
    metric: EvalMetric
    patience: int = 0
    min_delta: float = 0.0
    best: float | None = None
    wait: int = 0
    stopped_epoch: int | None = None  # the (0-based) epoch after which the run stopped

    def step(self, epoch: int, value: float) -> bool:
        """Count epoch ``epoch``'s eval-metric ``value``; returns whether the run stops after it."""
        if self.best is None or is_better(value, self.best, self.metric, self.min_delta):
            self.best, self.wait = value, 0
        else:
            self.wait += 1
        if self.patience and self.wait >= self.patience and self.stopped_epoch is None:
            self.stopped_epoch = epoch
        return self.stopped_epoch is not None

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint keeps (plain numbers)."""
        return {"best": self.best, "wait": self.wait, "stopped_epoch": self.stopped_epoch}

    def restore(self, state: Mapping[str, Any] | None, history: Sequence[Mapping[str, Any]]) -> None:
        """Continue from a checkpoint's ``state``; a checkpoint saved before the counter existed (None) has it
        rebuilt from its ``history`` rows, as the run would have counted them. A run that stopped stays stopped
        only if it would stop under this run's ``patience`` too: resumed with a larger one (or 0) it trains on."""
        if state is not None:
            self.best, self.wait = state["best"], state["wait"]
            stopped = state["stopped_epoch"]
            self.stopped_epoch = stopped if self.patience and self.wait >= self.patience else None
            return
        for row in history:
            if row.get(self.metric.row_key) is not None:
                self.step(row["epoch"], row[self.metric.row_key])
