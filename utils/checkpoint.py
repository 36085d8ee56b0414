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
from pathlib import Path
from typing import Any

import numpy as np
import torch

logger = logging.getLogger(__name__)


class CheckpointError(RuntimeError):
    """A checkpoint file is missing, corrupt, unsafe or does not fit the model."""


def save_checkpoint(state: dict[str, Any], path: str | Path, keep_previous: bool = False) -> None:
    """Write ``state`` atomically: a temporary file in the same folder, fsync, then rename.

    A kill at any moment leaves either the old file or the new one, never a half-written one. With
    ``keep_previous`` the file being replaced is kept as ``<name>.prev`` so a corrupt newest file still
    leaves one valid checkpoint behind.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        if keep_previous and path.exists():
            os.replace(path, previous_path(path))
        os.replace(tmp, path)
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
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        try:
            os.link(source, tmp)
        except OSError:  # no hard links here (some network or FAT file systems)
            shutil.copyfile(source, tmp)
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
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


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint or weights file with ``weights_only=True`` and explain failures."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
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
