"""``--log_interval N``: a line every N optimizer steps inside an epoch (timm's and MMPretrain's per-iteration
line), so that a long epoch can be watched: the loss of those steps, the LR, images/s, the share of the time
spent waiting for data, and the epoch's ETA from the mean step time. The same numbers go to TensorBoard at the
run's global step.

``StepLog`` is handed to ``train_one_epoch`` (on the logging rank only); it times the loader (``timed``) and is
told of every optimizer step (``step``). It reads the device's running sums only on the steps it logs.
"""
from __future__ import annotations

import logging
import time
from typing import Any, Iterable, Iterator

from utils.misc import HoldSignals

logger = logging.getLogger(__name__)

STEP_TAGS = ("loss", "lr", "img_per_s", "data_share")  # the TensorBoard scalars, under ``step/``


def format_eta(seconds: float) -> str:
    """``seconds`` as ``H:MM:SS``."""
    seconds = max(0, int(round(seconds)))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def step_line(fields: dict[str, Any]) -> str:
    """The logged line of one step (``experiments.runs.STEP_LINE`` reads it back for a sweep)."""
    return (f"epoch {fields['epoch'] + 1}/{fields['epochs']}  step {fields['step']}/{fields['steps']}  "
            f"loss {fields['loss']:.4f}  lr {fields['lr']:.2e}  {fields['img_per_s']:.0f} img/s  "
            f"data {100 * fields['data_share']:.0f}%  eta {format_eta(fields['eta_s'])}")


class StepLog:
    """Logs every ``every``-th optimizer step of each epoch (of ``steps_per_epoch``, ``accumulation_steps``
    batches each) to the log and to ``writer`` (a TensorBoard ``SummaryWriter`` or None, duck-typed), at global
    step ``epoch * steps_per_epoch + step``. ``world_size``: the processes training together; images/s counts
    all of them (this rank's images times the world size)."""

    def __init__(self, every: int, steps_per_epoch: int, epochs: int, accumulation_steps: int = 1,
                 writer: Any = None, world_size: int = 1) -> None:
        self.every, self.steps_per_epoch, self.epochs = every, steps_per_epoch, epochs
        self.accumulation_steps, self.writer, self.world_size = accumulation_steps, writer, world_size
        self.fields: dict[str, Any] | None = None  # the last logged step's numbers
        self._begin({"loss": 0.0, "seen": 0})

    def _begin(self, sums: dict[str, float]) -> None:
        now = time.perf_counter()
        self._start = self._last = now
        self._data = self._data_last = 0.0
        self._steps, self._images_last = 0, 0
        self._loss_last = (sums["loss"], sums["seen"])

    def timed(self, batches: Iterable, sums: dict[str, float]) -> Iterator:
        """``batches`` (one epoch's), timing how long each takes to arrive: the data wait. ``sums``: the epoch's
        running sums as they start (a resumed epoch's are not zero)."""
        self._begin(sums)
        iterator = iter(batches)
        while True:
            start = time.perf_counter()
            try:
                item = next(iterator)
            except StopIteration:
                return
            self._data += time.perf_counter() - start
            yield item

    def step(self, epoch: int, batch: int, lr: float, running: Any, images: int) -> None:
        """After the optimizer step that ended batch ``batch`` (0-based, of the epoch) at LR ``lr``;
        ``running``: the loop's ``RunningSums``; ``images``: the images this process trained this epoch so far."""
        self._steps += 1
        step = -(-(batch + 1) // self.accumulation_steps)  # the epoch's optimizer step, from 1
        if step % self.every:
            return
        sums = running.read()
        now = time.perf_counter()
        span = max(now - self._last, 1e-9)
        loss_sum, seen = sums["loss"] - self._loss_last[0], sums["seen"] - self._loss_last[1]
        self.fields = {"epoch": epoch, "epochs": self.epochs, "step": step, "steps": self.steps_per_epoch,
                       "loss": loss_sum / max(1, seen), "lr": lr,
                       "img_per_s": (images - self._images_last) * self.world_size / span,
                       "data_share": min(1.0, (self._data - self._data_last) / span),
                       "eta_s": (now - self._start) / self._steps * (self.steps_per_epoch - step)}
        self._last, self._data_last, self._images_last = now, self._data, images
        self._loss_last = (sums["loss"], sums["seen"])
        logger.info("%s", step_line(self.fields))
        if self.writer is not None:
            global_step = epoch * self.steps_per_epoch + step
            for tag in STEP_TAGS:
                self.writer.add_scalar(f"step/{tag}", self.fields[tag], global_step)

    def close(self) -> None:
        """Close the writer (its events reach the disk)."""
        if self.writer is not None:
            with HoldSignals():  # a SIGTERM mid-close would leave the writer's thread hanging
                self.writer.close()
