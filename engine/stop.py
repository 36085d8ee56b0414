"""A stop request: the first SIGINT/SIGTERM asks a training run to stop at the next safe point."""
from __future__ import annotations

import itertools
import logging
import signal
from typing import Any, Callable

import torch

from utils.distributed import any_rank
from utils.misc import StopSignals

logger = logging.getLogger(__name__)


class StopRequest(StopSignals):
    """Turns the first SIGINT/SIGTERM into a request to stop after the current optimizer step (a second
    one interrupts at once); the handlers are restored on exit."""

    def __init__(self) -> None:
        super().__init__()
        self.requested = False

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        logger.warning("%s received: finishing the current step (or this epoch's validation), then saving "
                       "last.pth (again to stop at once)",
                       signal.Signals(signum).name)

    def __call__(self) -> bool:
        return self.requested


def stop_check(stop: StopRequest, device: torch.device, every: int) -> Callable[[], bool]:
    """``should_stop`` for train_one_epoch: under DDP the ranks agree (one all-reduce) every ``every``
    steps, the same steps on every rank, so all stop together without a sync point at each step."""
    count = itertools.count(1)
    return lambda: next(count) % every == 0 and any_rank(stop.requested, device)
