"""One run per directory: an exclusive lock on a run directory, held for the whole run; and
:func:`fresh_dir`, a new folder per run for modes whose every run is a new result (``--predict``).

The lock is ``fcntl.flock`` on ``<run_dir>/run.lock``, a file holding the holder's pid, host and start
time (for the message a refused second run prints). The kernel drops a flock when its process ends in
any way, SIGKILL included, so a lock file left by a dead run is no obstacle: the next run locks it and
takes it over (and says so). The file is removed on a normal exit.
"""
from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import socket
import time
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

LOCK_NAME = "run.lock"


class RunDirLocked(RuntimeError):
    """Another live process holds the run directory's lock."""


def _holder(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _describe(holder: dict[str, Any]) -> str:
    if not holder:
        return "an unknown process"
    started = holder.get("started")
    when = f", started {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(started))}" if started else ""
    return f"pid {holder.get('pid')} on host {holder.get('host')}{when}"


class RunLock:
    """``with RunLock(run_dir):`` holds ``run_dir/run.lock`` exclusively or raises :class:`RunDirLocked`
    naming the holder. Lock only from one process per run (rank 0 under torchrun)."""

    def __init__(self, run_dir: str | Path) -> None:
        self.path = Path(run_dir) / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> None:
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                os.close(fd)
                if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise RunDirLocked(
                        f"run directory {self.path.parent} is in use by another training run "
                        f"({_describe(_holder(self.path))}); wait for it to end, or pick another --tag") from None
                if e.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                    logger.warning("cannot lock %s (the file system has no locks): nothing stops a second run "
                                   "in this directory", self.path)
                    return
                raise
            # A releasing holder unlinks the file: a lock on an unlinked file guards nothing, so try again.
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(self.path))
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        stale = _holder(self.path)
        if stale:
            logger.warning("took over the lock of %s, which is no longer running (a killed run)", _describe(stale))
        me = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(me).encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)  # while still locked: no one can take a lock on the old file meanwhile
        finally:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "RunLock":
        self.acquire()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()


def fresh_dir(parent: str | Path, name: str) -> Path:
    """Make and return ``parent/name``, or the first of ``name-2``, ``name-3``... that does not exist yet.

    ``mkdir`` either creates a folder or fails, so two processes started at once never get the same one:
    each run writes only into a folder that nothing else has touched."""
    parent = Path(parent)
    parent.mkdir(parents=True, exist_ok=True)
    n = 1
    while True:
        folder = parent / (name if n == 1 else f"{name}-{n}")
        try:
            folder.mkdir()
            return folder
        except FileExistsError:
            n += 1


def lock_holder(run_dir: str | Path) -> str | None:
    """Who holds ``run_dir``'s lock now (``pid N on host H, started ...``), or None when no live process
    does (no lock file, or one a dead run left). Probes with a shared lock released at once; takes nothing."""
    path = Path(run_dir) / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError as e:
        return _describe(_holder(path)) if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES) else None
    finally:
        os.close(fd)
    return None
