"""What every dataset layout shares: the one error it raises for malformed data, how a check collects errors
instead of raising, and the optional ``classes.txt``."""
from __future__ import annotations

from pathlib import Path


class DatasetError(ValueError):
    """The dataset on disk is malformed; the message says where and how to fix it."""


Errors = list[DatasetError] | None  # where check_images collects structural errors


def report(errors: list[DatasetError] | None, error: DatasetError) -> None:
    """Raise ``error``, or with an ``errors`` list collect it and let the caller go on (``check_images``
    reports every problem of a split, not only the first)."""
    if errors is None:
        raise error
    errors.append(error)


def read_classes_file(root: Path) -> list[str] | None:
    """The class names of ``root/classes.txt`` (one per line, in label order), None when there is none."""
    file = root / "classes.txt"
    if not file.is_file():
        return None
    names = [line.strip() for line in file.read_text().splitlines() if line.strip()]
    if not names:
        raise DatasetError(f"{file}: no class names (one name per line, in label order)")
    if len(set(names)) != len(names):
        raise DatasetError(f"{file}: duplicate class names")
    return names
