"""Checkpoint io: atomic writes, safe loads (``weights_only=True``) and RNG state capture.

A checkpoint is a plain dict of tensors and Python primitives, so it loads with ``weights_only=True``:
no pickled code ever runs when a file is opened.
"""
from __future__ import annotations

import logging
import os
import pickle
import random
import shutil
import signal
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import torch

logger = logging.getLogger(__name__)


class CheckpointError(RuntimeError):
    """A checkpoint file is missing, corrupt, unsafe or does not fit the model."""


# Test-only fault injection: ``PLAYGROUND_KILL_AT=POINT:N`` makes this process SIGKILL itself the N-th
# time (default 1) it reaches POINT, so tests can kill a real run at an exact moment of a save. The
# points: ``last_tmp`` (last.pth's temporary file half written), ``last_replaced`` (last.pth just
# renamed into place), ``best_tmp`` (best.pth's temporary link made, not yet renamed), and ``final_test``
# (applications/train.py: the final test evaluation begins). last.pth is saved once per epoch, so N is
# the epoch (1-based) in a run started afresh; best.pth is linked once per new best epoch.
KILL_AT_ENV = "PLAYGROUND_KILL_AT"
_kill_hits: Counter = Counter()


def kill_point(name: str) -> None:
    """SIGKILL this process here when ``$PLAYGROUND_KILL_AT`` names this point and hit (tests only)."""
    wanted = os.environ.get(KILL_AT_ENV)
    if not wanted:
        return
    point, _, nth = wanted.partition(":")
    if point == name:
        _kill_hits[name] += 1
        if _kill_hits[name] == int(nth or 1):
            os.kill(os.getpid(), signal.SIGKILL)


def _tmp_path(path: Path) -> Path:
    """The temporary file a save of ``path`` writes first (named per process, hidden)."""
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def remove_stale_temporaries(folder: str | Path) -> list[Path]:
    """Delete the temporary files that killed saves left in ``folder`` (``.<name>.tmp-<pid>``; each can be
    a whole checkpoint). Call it only while holding the run directory's lock: no other save is running."""
    removed = []
    for tmp in Path(folder).glob(".*.tmp-*"):
        if tmp.is_file() and not tmp.is_symlink():
            tmp.unlink()
            removed.append(tmp)
    if removed:
        logger.info("removed %d temporary file(s) left by an interrupted save in %s: %s", len(removed), folder,
                    ", ".join(p.name for p in removed))
    return removed


def save_checkpoint(state: dict[str, Any], path: str | Path, keep_previous: bool = False) -> None:
    """Write ``state`` atomically: a temporary file in the same folder, fsync, then rename.

    A kill at any moment leaves either the old file or the new one, never a half-written one. With
    ``keep_previous`` the file being replaced is kept as ``<name>.prev`` so a corrupt newest file still
    leaves one valid checkpoint behind.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_path(path)
    try:
        with open(tmp, "wb") as f:
            torch.save(state, f)
            kill_point(f"{path.stem}_tmp")
            f.flush()
            os.fsync(f.fileno())
        if keep_previous and path.exists():
            os.replace(path, previous_path(path))
        os.replace(tmp, path)
        kill_point(f"{path.stem}_replaced")
    finally:
        if tmp.exists():
            tmp.unlink()
    _fsync_dir(path.parent)


def link_checkpoint(source: str | Path, path: str | Path) -> None:
    """Make ``path`` the checkpoint just written to ``source`` (best.pth after an epoch that is also the
    best), atomically and without writing the bytes again: a hard link, or a copy where the file system
    has none. Checkpoints are only ever replaced (a new file renamed over the name), never written in
    place, so replacing ``source`` later leaves ``path`` as it was."""
    source, path = Path(source), Path(path)
    tmp = _tmp_path(path)
    try:
        try:
            os.link(source, tmp)
        except OSError:  # no hard links here (some network or FAT file systems)
            shutil.copyfile(source, tmp)
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
        kill_point(f"{path.stem}_tmp")
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    _fsync_dir(path.parent)


def _fsync_dir(folder: Path) -> None:
    """Persist a folder's entries (a rename is durable only once its folder is synced)."""
    dir_fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def previous_path(path: str | Path) -> Path:
    """Where ``save_checkpoint(keep_previous=True)`` keeps the file it replaced."""
    path = Path(path)
    return path.with_name(path.name + ".prev")


def load_checkpoint(path: str | Path, mmap: bool = False) -> dict[str, Any]:
    """Load a checkpoint or weights file with ``weights_only=True`` and explain failures (``mmap``: map the
    tensors instead of reading them, for a look at a checkpoint's bookkeeping)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as e:
        raise CheckpointError(
            f"{path} cannot be loaded safely (weights_only=True): it holds objects that need arbitrary code "
            f"to unpickle. Re-save only its state dict, e.g. torch.save(model.state_dict(), 'weights.pth'). "
            f"Detail: {str(e).splitlines()[0]}") from None
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        raise CheckpointError(f"{path} is corrupt or truncated and cannot be read: {e}") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path} holds a {type(obj).__name__}, expected a dict (a state dict or a checkpoint)")
    return obj


def capture_rng_state() -> dict[str, Any]:
    """Python, NumPy and torch RNG states as tensors and primitives (safe for ``weights_only``)."""
    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *map(_py, np_state[2:])],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng_state`."""
    random.setstate(_tuples(state["python"]))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _py(x: Any) -> Any:
    return x.item() if hasattr(x, "item") else x


def _tuples(x: Any) -> Any:
    """random.setstate wants the nested tuples that getstate gave, which loading may turn into lists."""
    return tuple(_tuples(i) for i in x) if isinstance(x, (list, tuple)) else x
