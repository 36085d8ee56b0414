"""The files of ``--extract_features``: ``features_<split>.npy``, ``features_<split>.csv`` and their sidecar
``features_<split>.json``, which says that the two belong together and what produced them.

The two data files cannot be replaced by one rename, so a kill between two renames could leave a new ``.npy``
beside an old ``.csv``. All three are written complete into one scratch folder first; then the old sidecar is
removed, the two data files are renamed into place and the new sidecar last. So at every moment a sidecar that is
present describes the files beside it (their sha256 and row count), and a missing one says the set is incomplete
(an interrupted write): :func:`load_features` checks both and refuses a stale or partial set.

The sidecar also records the checkpoint that produced the features (its resolved path, size, modification time
and sha256), the split, the data folder, and the rows and dimensions.
"""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import numpy as np

from utils.atomic import (
    atomic_write,
    file_sha256,
    fsync_dir,
    move_into_place,
    temp_dir,
    write_json_atomic,
    write_text_atomic,
)

SIDECAR_VERSION = 1


class FeatureFilesError(ValueError):
    """Feature files that are incomplete, stale (not the ones their sidecar describes) or unreadable."""


def feature_paths(folder: str | Path, split: str) -> tuple[Path, Path, Path]:
    """``features_<split>.npy``, ``.csv`` (the index) and ``.json`` (the sidecar) in ``folder``."""
    stem = Path(folder) / f"features_{split}"
    return stem.with_suffix(".npy"), stem.with_suffix(".csv"), stem.with_suffix(".json")


def checkpoint_identity(path: str | Path) -> dict[str, Any]:
    """What names a checkpoint file: its resolved path, size, modification time (ns) and sha256."""
    path = Path(path).resolve()
    stat = path.stat()
    return {"path": str(path), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": file_sha256(path)}


def write_features(folder: str | Path, split: str, features: np.ndarray, index_csv: str, checkpoint: str | Path,
                   data: str | Path | None = None) -> dict[str, Any]:
    """Write ``features`` (``N x D``), the index (``index_csv``, a header and N rows) and the sidecar naming
    ``checkpoint`` and ``data`` into ``folder`` as one set (see the module's docstring); returns the sidecar."""
    npy, index, sidecar_path = feature_paths(folder, split)
    rows, index_rows = len(features), len(list(csv.reader(io.StringIO(index_csv)))) - 1
    if index_rows != rows:
        raise FeatureFilesError(f"the index of {split} has {index_rows} rows, the features {rows}")
    with temp_dir(sidecar_path) as scratch:
        with atomic_write(scratch / npy.name, "wb") as f:
            np.save(f, features)
        write_text_atomic(scratch / index.name, index_csv)
        sidecar = {"format_version": SIDECAR_VERSION, "split": split, "rows": rows,
                   "dim": int(features.shape[1]) if features.ndim == 2 else 0, "dtype": str(features.dtype),
                   "features": {"file": npy.name, "sha256": file_sha256(scratch / npy.name)},
                   "index": {"file": index.name, "sha256": file_sha256(scratch / index.name)},
                   "checkpoint": checkpoint_identity(checkpoint),
                   "data": str(Path(data).resolve()) if data is not None else None}
        write_json_atomic(scratch / sidecar_path.name, sidecar)
        sidecar_path.unlink(missing_ok=True)  # from here until the last rename no sidecar vouches for the files
        fsync_dir(sidecar_path.parent)
        move_into_place([(scratch / path.name, path) for path in (npy, index, sidecar_path)])
    return sidecar


def read_sidecar(folder: str | Path, split: str) -> dict[str, Any]:
    """The sidecar of ``split``'s feature files, checked against the files beside it (sha256 of both); raise
    :class:`FeatureFilesError` saying what is wrong and how to fix it."""
    npy, index, sidecar_path = feature_paths(folder, split)
    rerun = f"run --extract_features {split} again"
    if not sidecar_path.is_file():
        raise FeatureFilesError(f"{sidecar_path} is missing: the feature files of {split} in {folder} are incomplete "
                                f"(an interrupted --extract_features) or were never written; {rerun}")
    try:
        sidecar = json.loads(sidecar_path.read_text())
    except (OSError, ValueError) as e:
        raise FeatureFilesError(f"{sidecar_path} is not a readable sidecar ({e}); {rerun}") from e
    for path, key in ((npy, "features"), (index, "index")):
        if not path.is_file():
            raise FeatureFilesError(f"{path} is missing beside {sidecar_path.name}; {rerun}")
        if file_sha256(path) != sidecar.get(key, {}).get("sha256"):
            raise FeatureFilesError(f"{path} is not the file {sidecar_path.name} was written with (its sha256 "
                                    f"differs): a stale or mixed set of feature files; {rerun}")
    return sidecar


def load_features(folder: str | Path, split: str) -> tuple[np.ndarray, list[dict[str, str]], dict[str, Any]]:
    """``split``'s features (``N x D``), index rows (``row,path,label,class_name`` dicts) and sidecar, after
    checking that they belong together (:func:`read_sidecar`) and have the sidecar's row count."""
    npy, index, sidecar_path = feature_paths(folder, split)
    sidecar = read_sidecar(folder, split)
    features = np.load(npy, allow_pickle=False)
    with open(index, newline="") as f:
        rows = list(csv.DictReader(f))
    if not len(features) == len(rows) == sidecar["rows"]:
        raise FeatureFilesError(f"{npy} has {len(features)} rows, {index} {len(rows)}, {sidecar_path.name} says "
                                f"{sidecar['rows']}; run --extract_features {split} again")
    return features, rows, sidecar
