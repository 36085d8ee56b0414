"""A training run's directory on disk: created and held (one run per directory, see ``utils.runlock``),
cleared, and removed again when the run fails before its first checkpoint."""
from __future__ import annotations

import contextlib
import logging
import shutil
from pathlib import Path
from typing import Iterator

from utils.checkpoint import previous_path
from utils.runlock import LOCK_NAME, RunLock

logger = logging.getLogger(__name__)

# What a run directory holds before this run writes anything: the log it has just opened, its lock.
OPEN_RUN_FILES = frozenset({"log.txt", LOCK_NAME})


def has_checkpoint(run_dir: Path) -> bool:
    """Whether ``run_dir`` holds a saved epoch (``last.pth`` or the previous one kept beside it)."""
    last = run_dir / "checkpoints" / "last.pth"
    return last.is_file() or previous_path(last).is_file()


def clear_dir(folder: Path, keep: frozenset[str] = frozenset()) -> None:
    """Delete everything in ``folder`` but the names in ``keep``; links are removed, never followed."""
    for child in folder.iterdir():
        if child.name in keep:
            continue
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()


@contextlib.contextmanager
def own_run_dir(run_dir: Path) -> Iterator[None]:
    """Create ``run_dir`` if needed and hold its lock (one run per directory) while the block runs.

    A run that fails before writing its first checkpoint leaves nothing behind: a folder it created goes
    (and so do the folders above it that it created, ``<output>/<arch>``, ...), in a folder that was
    there only the log it started.
    """
    created = [p for p in reversed(run_dir.parents) if not p.exists()]  # outermost first
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    try:
        run_dir.mkdir()
        created.append(run_dir)
    except FileExistsError:
        pass
    new_log = not (run_dir / "log.txt").exists()
    remove: list[Path] = []
    try:
        with RunLock(run_dir):
            try:
                yield
            except BaseException:
                if run_dir in created and not has_checkpoint(run_dir):
                    clear_dir(run_dir, keep=frozenset({LOCK_NAME}))  # the lock file goes as the lock is released
                    remove = created[::-1]  # deepest first
                elif new_log and not has_checkpoint(run_dir):  # a folder that was there: only our log goes
                    (run_dir / "log.txt").unlink(missing_ok=True)
                raise
    finally:
        for folder in remove:
            with contextlib.suppress(OSError):  # not empty: another run has started there meanwhile
                folder.rmdir()
        if remove and not run_dir.exists():
            logger.info("removed %s: this run failed before its first checkpoint", run_dir)
