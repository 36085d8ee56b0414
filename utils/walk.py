"""The one folder walker: which files under a folder count, and in which order.

Every reader of image folders (class folders of a dataset, ``--predict`` and ``--visual_source`` folders,
``utils/check_images.py``) lists files through here, so they all see the same files:

* hidden names (starting with ``.``) are skipped, files and folders alike, at every depth below the
  folder given (``.ipynb_checkpoints``, ``.DS_Store``, editors' and ``rsync``'s temporary files);
* extensions match case-insensitively (``a.PNG`` is a ``.png``);
* symlinked files are listed (a dangling link too, so its reader reports it rather than it vanishing);
* symlinked folders are followed, as the folders they point to (datasets often link class folders
  from another disk), except a link back to a folder already being walked, which would loop forever:
  that one is skipped with a warning;
* the order is deterministic: a folder's files in name order, then its subfolders in name order, depth
  first (``os.walk``'s top-down order with sorted names).

An unreadable folder is an error (PermissionError), never silently an empty one.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Iterable, Iterator

logger = logging.getLogger(__name__)


def is_hidden(name: str) -> bool:
    """A file or folder name the walker skips."""
    return name.startswith(".")


def has_extension(name: str, extensions: Iterable[str]) -> bool:
    """Whether ``name`` ends in one of ``extensions`` (lower case, with the dot), ignoring case."""
    return name.lower().endswith(tuple(extensions))


def _visible_entries(folder: Path) -> tuple[list[str], list[str]]:
    """The visible file names and folder names directly in ``folder``, each sorted."""
    files, folders = [], []
    with os.scandir(folder) as entries:
        for entry in entries:
            if is_hidden(entry.name):
                continue
            (folders if entry.is_dir() else files).append(entry.name)  # is_dir follows symlinks
    return sorted(files), sorted(folders)


def visible_subfolders(folder: str | Path) -> list[Path]:
    """The visible folders directly in ``folder`` (symlinked ones included), in name order."""
    folder = Path(folder)
    return [folder / name for name in _visible_entries(folder)[1]]


def _walk(folder: Path, ancestors: frozenset[str]) -> Iterator[Path]:
    files, folders = _visible_entries(folder)
    yield from (folder / name for name in files)
    for name in folders:
        real = os.path.realpath(folder / name)
        if real in ancestors:
            logger.warning("skipping %s: it links back to %s, which is being listed (a loop)", folder / name, real)
            continue
        yield from _walk(folder / name, ancestors | {real})


def visible_files(folder: str | Path, extensions: Iterable[str] | None = None) -> list[Path]:
    """Every visible file under ``folder``, recursively, in the walker's order (see the module's rules);
    with ``extensions`` (``(".png", ...)``) only the files ending in one of them, ignoring case."""
    folder = Path(folder)
    found = _walk(folder, frozenset({os.path.realpath(folder)}))
    if extensions is None:
        return list(found)
    extensions = tuple(extensions)
    return [path for path in found if has_extension(path.name, extensions)]
