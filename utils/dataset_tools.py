"""Writing a class-folder dataset in the other layouts (txt lists, zip archives) with the same order.

The sample order and the labels are identical across the three layouts, so the same seed gives the
same training run on any of them.
"""
from __future__ import annotations

import os
import zipfile
from pathlib import Path
from typing import Sequence

SPLITS = ("train", "val", "test")


def _folder_samples(root: Path, split: str, classes: Sequence[str]) -> list[tuple[Path, int]]:
    from dataloader.datasets import FolderLayout
    return [(Path(p), label) for p, label in FolderLayout.samples(root, split, classes)]


def write_txt_lists(folder_root: str | Path, out_root: str | Path) -> Path:
    """``out_root/{split}.txt`` (paths relative to ``out_root``) and ``classes.txt`` for a folder dataset."""
    from dataloader.datasets import FolderLayout
    folder_root, out_root = Path(folder_root).resolve(), Path(out_root)
    out_root.mkdir(parents=True, exist_ok=True)
    classes = FolderLayout.classes(folder_root)
    (out_root / "classes.txt").write_text("\n".join(classes) + "\n")
    for split in SPLITS:
        if not (folder_root / split).is_dir():
            continue
        lines = [f"{os.path.relpath(p, out_root.resolve())} {label}"
                 for p, label in _folder_samples(folder_root, split, classes)]
        (out_root / f"{split}.txt").write_text("\n".join(lines) + "\n")
    return out_root


def write_zip_archives(folder_root: str | Path, out_root: str | Path) -> Path:
    """``out_root/{split}.zip`` with ``{split}_map.txt`` (``member<TAB>label``) and ``classes.txt``."""
    from dataloader.datasets import FolderLayout
    folder_root, out_root = Path(folder_root).resolve(), Path(out_root)
    out_root.mkdir(parents=True, exist_ok=True)
    classes = FolderLayout.classes(folder_root)
    (out_root / "classes.txt").write_text("\n".join(classes) + "\n")
    for split in SPLITS:
        if not (folder_root / split).is_dir():
            continue
        lines = []
        with zipfile.ZipFile(out_root / f"{split}.zip", "w", zipfile.ZIP_STORED) as zf:
            for path, label in _folder_samples(folder_root, split, classes):
                member = path.relative_to(folder_root / split).as_posix()
                zf.write(path, member)
                lines.append(f"{member}\t{label}")
        (out_root / f"{split}_map.txt").write_text("\n".join(lines) + "\n")
    return out_root
