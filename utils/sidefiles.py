"""Reading and writing the per-image side files: teacher probabilities and curriculum weights.

Both are plain text with one line per image, ``key,v0,v1,...``, where the key is the image's path
relative to the dataset root (``ClassificationDataset.key``). Keys may hold commas: values are split
off from the right.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable, Sequence

from utils.atomic import atomic_write


def write_rows(path: str | Path, rows: Iterable[tuple[str, Sequence[float]]], overwrite: bool,
               fmt: str = "{:.6g}") -> Path:
    """Write ``key,v0,v1,...`` lines atomically; an existing file is an error unless ``overwrite``."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} already exists; pass --overwrite to replace it")
    with atomic_write(path) as f:
        for key, values in rows:
            f.write(",".join([key, *(fmt.format(v) for v in values)]) + "\n")
    return path


def read_rows(path: str | Path, width: int) -> dict[str, list[float]]:
    """``{key: [v0, ..., v{width-1}]}``; a malformed line is an error naming the file and line."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    rows: dict[str, list[float]] = {}
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        parts = line.rsplit(",", width)
        try:
            if len(parts) != width + 1 or not parts[0]:
                raise ValueError
            rows[parts[0]] = [float(v) for v in parts[1:]]
        except ValueError:
            raise ValueError(f"{path}:{lineno}: malformed line {line[:80]!r}: expected path followed by "
                             f"{width} comma-separated numbers") from None
    return rows
