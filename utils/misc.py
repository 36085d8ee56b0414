"""Devices, seeds and logging set-up.

torch is imported inside the functions that need it: ``main.py`` sets up logging for every mode, and
``--compare`` must not pay for importing torch.
"""
from __future__ import annotations

import logging
import random
import signal
import sys
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

import numpy as np

if TYPE_CHECKING:  # annotations only: torch is imported where it is used
    import torch

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def resolve_device(name: str | None) -> torch.device:
    """``cpu``, ``cuda`` or ``cuda:N``; None picks CUDA when present. Asking for a missing GPU is an error."""
    import torch
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"--device {name}: CUDA is not available on this machine; use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) present")
    return device


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch so that a CPU run repeats exactly."""
    import torch
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time (test runners swap and close it)."""

    @property  # type: ignore[override]
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def setup_logging(level: int = logging.INFO) -> None:
    """Log to stderr (once per process)."""
    root = logging.getLogger()
    root.setLevel(level)
    if not any(getattr(h, "_playground", False) for h in root.handlers):
        h = _StderrHandler()
        h._playground = True  # type: ignore[attr-defined]
        h.setFormatter(logging.Formatter(LOG_FORMAT, "%H:%M:%S"))
        root.addHandler(h)


# The last line log_to_file writes when its block ends with an error: how ``--compare`` tells a failed run.
FAILED_MARK = "run failed: "


@contextmanager
def log_to_file(path: str | Path) -> Iterator[None]:
    """Also write every log record to ``path`` (the run directory's log.txt) while the block runs.

    A block that ends with an exception (other than an interrupt) ends the file with one ERROR line
    ``run failed: <type>: <message>`` (the file only: the caller reports the error on stderr), so the
    run directory itself says that its last process failed."""
    root = logging.getLogger()
    if root.level > logging.INFO or root.level == logging.NOTSET:
        root.setLevel(logging.INFO)
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter(LOG_FORMAT, "%Y-%m-%d %H:%M:%S"))
    root.addHandler(handler)
    try:
        yield
    except Exception as e:
        handler.emit(logging.LogRecord("run", logging.ERROR, __file__, 0, "%s%s: %s",
                                       (FAILED_MARK, type(e).__name__, e), None))
        raise
    finally:
        root.removeHandler(handler)
        handler.close()


@contextmanager
def main_process_log(is_main: bool, path: str | Path) -> Iterator[None]:
    """Under DDP: the main process logs to the console and ``path`` (its folder created), as
    :func:`log_to_file`; every other process logs only warnings and writes no file."""
    if not is_main:
        logging.getLogger().setLevel(logging.WARNING)
        yield
        return
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with log_to_file(path):
        yield


class StopSignals:
    """Routes SIGINT and SIGTERM to ``self._handle`` while the block runs (signals reach the main thread
    only, so elsewhere it does nothing), then restores the previous handlers. Subclasses say what a
    signal does: the training run's stop request, the sweep's forwarding to its children."""

    def __init__(self) -> None:
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        raise NotImplementedError

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


class Interrupted(KeyboardInterrupt):
    """A SIGTERM or SIGINT that ends a run at once: a KeyboardInterrupt (every cleanup that handles Ctrl-C
    runs) whose message names the signal and what to do; main.py prints it and exits with 130."""


class InterruptOnSignals(StopSignals):
    """While the block runs, SIGTERM interrupts as Ctrl-C does (raising :class:`Interrupted`) instead of
    killing the process with no word (exit 143); ``hint`` is added to the message. A :class:`StopSignals`
    entered inside (the training loop's stop request) takes over for its own block."""

    def __init__(self, hint: str = "") -> None:
        super().__init__()
        self.hint = hint

    def _handle(self, signum: int, frame: Any) -> None:
        raise Interrupted(f"{signal.Signals(signum).name} received" + (f"; {self.hint}" if self.hint else ""))


class HoldSignals(StopSignals):
    """While the block runs, a SIGINT/SIGTERM waits: it is raised again, to the handler outside the block,
    when the block ends. For short sections that an exception raised at an arbitrary point would break:
    TensorBoard's writer (an interrupt inside its queue's ``put`` loses the wake-up its thread waits for, and
    ``close`` then hangs for ever). Outside the main thread it does nothing (signals never reach there)."""

    def __init__(self) -> None:
        super().__init__()
        self.held: list[int] = []

    def _handle(self, signum: int, frame: Any) -> None:
        self.held.append(signum)

    def __exit__(self, *exc: Any) -> None:
        super().__exit__(*exc)
        if self.held:
            signal.raise_signal(self.held[0])
