"""Checkpoint io: atomic writes, safe loads (``weights_only=True``) and RNG state capture.

A checkpoint is a plain dict of tensors and Python primitives, so it loads with ``weights_only=True``:
no pickled code ever runs when a file is opened.
"""
from __future__ import annotations

import json
import logging
import os
import pickle
import random
import re
import signal
import zipfile
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import torch

from utils.atomic import atomic_path, atomic_write, link_or_copy

logger = logging.getLogger(__name__)


class CheckpointError(RuntimeError):
    """A checkpoint file is missing, corrupt, unsafe or does not fit the model."""


# Test-only fault injection: ``PLAYGROUND_KILL_AT=POINT:N`` makes this process SIGKILL itself the N-th
# time (default 1) it reaches POINT, so tests can kill a real run at an exact moment of a save. The
# points: ``last_tmp`` (last.pth's temporary file half written), ``last_replaced`` (last.pth just
# renamed into place), ``best_tmp`` (best.pth's temporary link made, not yet renamed), ``final_test``
# (applications/train.py: the final test evaluation begins) and ``step`` (engine/loops.py: an optimizer step
# done, before its ``--save_every_steps`` save; N counts this process's steps). last.pth is saved once per
# epoch (without --save_every_steps), so N is the epoch (1-based) in a run started afresh; best.pth is
# linked once per new best epoch.
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


def save_checkpoint(state: dict[str, Any], path: str | Path, keep_previous: bool = False) -> None:
    """Write ``state`` atomically: a temporary file in the same folder, fsync, then rename.

    A kill at any moment leaves either the old file or the new one, never a half-written one. With
    ``keep_previous`` the file being replaced is kept as ``<name>.prev`` so a corrupt newest file still
    leaves one valid checkpoint behind. A write the system refuses (a full disk, a read-only or
    unwritable folder) raises CheckpointError naming the file and the reason, the old file untouched.
    """
    path = Path(path)
    try:
        with atomic_write(path, "wb", previous=previous_path(path) if keep_previous else None) as f:
            _save_reporting_write_errors(state, f)
            kill_point(f"{path.stem}_tmp")
        kill_point(f"{path.stem}_replaced")
    except OSError as e:
        kept = f"the previous {path.name} is kept" if path.exists() else "nothing was written"
        raise CheckpointError(f"cannot write checkpoint {path}: {e.strerror or e} (write failed; {kept}); free "
                              f"space or fix the folder's permissions, then rerun the same command") from e


class _WriteErrors:
    """A file's ``write`` that remembers the OSError it raised: torch.save turns a failed write (a full
    disk) into a bare 'unexpected pos 704 vs 598' RuntimeError, which would hide the reason."""

    def __init__(self, file: Any) -> None:
        self.file, self.error = file, None

    def write(self, data: bytes) -> int:
        try:
            return self.file.write(data)
        except OSError as e:
            self.error = e
            raise

    def flush(self) -> None:
        self.file.flush()


def _save_reporting_write_errors(state: dict[str, Any], file: Any) -> None:
    """``torch.save(state, file)``, raising the OSError behind a failed write instead of torch's RuntimeError."""
    writer = _WriteErrors(file)
    try:
        torch.save(state, writer)
    except RuntimeError:
        if writer.error is None:
            raise
        raise writer.error from None


def link_checkpoint(source: str | Path, path: str | Path) -> None:
    """Make ``path`` the checkpoint just written to ``source`` (best.pth after an epoch that is also the
    best), atomically and without writing the bytes again: a hard link, or a copy where the file system
    has none. Checkpoints are only ever replaced (a new file renamed over the name), never written in
    place, so replacing ``source`` later leaves ``path`` as it was."""
    source, path = Path(source), Path(path)
    with atomic_path(path) as tmp:
        link_or_copy(source, tmp)
        kill_point(f"{path.stem}_tmp")


def previous_path(path: str | Path) -> Path:
    """Where ``save_checkpoint(keep_previous=True)`` keeps the file it replaced."""
    path = Path(path)
    return path.with_name(path.name + ".prev")


# How torch.save files start: a zip archive (the format since torch 1.6), or the legacy format, which
# opens with the pickled magic number.
_ZIP_SIGNATURE = b"PK\x03\x04"
_LEGACY_SIGNATURE = pickle.dumps(torch.serialization.MAGIC_NUMBER, protocol=2)


def load_checkpoint(path: str | Path, mmap: bool = False) -> dict[str, Any]:
    """Load a checkpoint or weights file with ``weights_only=True`` and explain failures (``mmap``: map the
    tensors instead of reading them, for a look at a checkpoint's bookkeeping).

    Files that are not torch.save output at all (text, random bytes, a plain pickle) are called that,
    rather than whatever torch's unpickler trips over first; a file refused for holding code names the
    callable it would run. torch's advice to retry with ``weights_only=False`` is never passed on.
    """
    path = Path(path)
    if path.suffix == ".safetensors" and path.is_file():
        tensors, metadata = load_safetensors(path)
        return {"model": tensors, **{k: _metadata_value(path, metadata, k) for k in JSON_METADATA_KEYS
                                     if k in metadata}}
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist")
    with open(path, "rb") as f:
        head = f.read(len(_LEGACY_SIGNATURE))
    if not head:
        raise CheckpointError(f"{path} is empty: not a PyTorch checkpoint (a truncated write?)")
    if not (head.startswith(_ZIP_SIGNATURE) or head == _LEGACY_SIGNATURE):
        raise CheckpointError(f"{path} is not a PyTorch checkpoint (neither a torch.save zip archive nor its legacy "
                              f"format); pass the .pth file written by training or torch.save")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as e:
        refused = re.search(r"GLOBAL ([\w.]+)", str(e))
        what = f"unpickling it would import and call {refused.group(1)}" if refused else \
            "it holds objects that need code to unpickle"
        raise CheckpointError(
            f"{path} cannot be loaded safely (weights_only=True): {what}; only tensors and plain data are "
            f"loaded. If you made it yourself, re-save only its state dict, e.g. "
            f"torch.save(model.state_dict(), 'weights.pth')") from None
    except (RuntimeError, EOFError, OSError, ValueError, KeyError) as e:
        if head.startswith(_ZIP_SIGNATURE) and zipfile.is_zipfile(path) and not _holds_torch_data(path):
            raise CheckpointError(f"{path} is a zip archive but not a PyTorch checkpoint "
                                  f"(no data.pkl inside)") from None
        raise CheckpointError(f"{path} is corrupt or truncated and cannot be read: {e}") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path} holds a {type(obj).__name__}, expected a dict (a state dict or a checkpoint)")
    return obj


# A published .safetensors file (``--publish OUT.safetensors``) carries these checkpoint entries in its metadata,
# each JSON-encoded (safetensors metadata is str -> str); load_checkpoint decodes them.
JSON_METADATA_KEYS = ("class_names", "config", "arch", "model_spec")


def load_safetensors(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """A safetensors file's tensors (on the CPU) and metadata, read without running code; a missing, empty,
    corrupt or other file is a CheckpointError naming it."""
    from safetensors import SafetensorError, safe_open
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"weights file {str(path)!r} does not exist")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path} is empty: not a safetensors file (a truncated write?)")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})
    except (SafetensorError, ValueError, OSError) as e:
        raise CheckpointError(f"{path} is not a valid safetensors file (corrupt, truncated or another format): "
                              f"{e}") from None


def _metadata_value(path: Path, metadata: dict[str, str], key: str) -> Any:
    """The JSON-decoded ``key`` of a safetensors file's metadata; malformed JSON is a CheckpointError naming
    the file and the key."""
    try:
        return json.loads(metadata[key])
    except ValueError as e:
        raise CheckpointError(f"{path}: its safetensors metadata {key!r} is not valid JSON ({e}); write the file "
                              f"again with --publish CKPT OUT.safetensors") from None


def safetensors_checkpoint(state: dict[str, torch.Tensor], entries: dict[str, Any]) -> bytes:
    """A safetensors file's bytes holding ``state`` and, as JSON metadata, the ``entries`` whose keys are in
    ``JSON_METADATA_KEYS`` (``format: pt`` as timm and transformers write). Tensors sharing memory are cloned
    apart, which safetensors requires."""
    from safetensors.torch import save
    seen: set[int] = set()
    tensors = {}
    for key, value in state.items():
        value = value.detach().cpu().contiguous()
        if value.numel() and value.untyped_storage().data_ptr() in seen:
            value = value.clone()
        seen.add(value.untyped_storage().data_ptr())
        tensors[key] = value
    metadata = {k: json.dumps(v) for k, v in entries.items() if k in JSON_METADATA_KEYS and v is not None}
    return save(tensors, metadata={"format": "pt", **metadata})


def saved_config(path: str | Path) -> Any:
    """The config a checkpoint was saved with (its ``config`` entry; tensors are mapped, not read; a
    ``.safetensors`` file's ``config`` metadata, read from its header alone), or None when it carries none or
    the file cannot be read (loading it later says why)."""
    if Path(path).suffix == ".safetensors":
        from safetensors import safe_open
        try:
            with safe_open(str(path), framework="pt", device="cpu") as f:
                return json.loads((f.metadata() or {}).get("config", "null"))
        except Exception:
            return None
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True).get("config")
    except Exception:
        return None


def _holds_torch_data(path: Path) -> bool:
    with zipfile.ZipFile(path) as z:
        return any(name.endswith("/data.pkl") or name == "data.pkl" for name in z.namelist())


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
