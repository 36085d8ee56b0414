"""Writing a class-folder dataset in the other layouts (txt lists, zip archives, csv tables, WebDataset shards)
with the same order (shards: a seeded shuffle of it, so that each shard holds every class).

The sample order and the labels are identical across the four layouts, so the same seed gives the
same training run on any of them.
"""
from __future__ import annotations

import csv
import io
import os
import random
import re
import zipfile
from pathlib import Path
from typing import Callable, Iterator

from dataloader.datasets import FolderLayout
from dataloader.shards import DEFAULT_SHARD_SAMPLES, write_wds_split
from utils.atomic import atomic_write, write_text_atomic

SPLITS = ("train", "val", "test")
SplitWriter = Callable[[Path, Path, str, list[tuple[Path, int]]], None]


def _splits(folder_root: Path, out_root: Path) -> Iterator[tuple[str, list[tuple[Path, int]]]]:
    """Write ``out_root/classes.txt`` and yield ``(split, [(path, label), ...])`` for each split present."""
    out_root.mkdir(parents=True, exist_ok=True)
    classes = FolderLayout.classes(folder_root)
    write_text_atomic(out_root / "classes.txt", "\n".join(classes) + "\n")
    for split in SPLITS:
        if (folder_root / split).is_dir():
            yield split, [(Path(p), label) for p, label in FolderLayout.samples(folder_root, split, classes)]


def _convert(folder_root: str | Path, out_root: str | Path, write_split: SplitWriter) -> Path:
    folder_root, out_root = Path(folder_root).resolve(), Path(out_root)
    for split, samples in _splits(folder_root, out_root):
        write_split(folder_root, out_root, split, samples)
    return out_root


def _txt_split(folder_root: Path, out_root: Path, split: str, samples: list[tuple[Path, int]]) -> None:
    lines = [f"{os.path.relpath(p, out_root.resolve())} {label}" for p, label in samples]
    write_text_atomic(out_root / f"{split}.txt", "\n".join(lines) + "\n")


def _zip_split(folder_root: Path, out_root: Path, split: str, samples: list[tuple[Path, int]]) -> None:
    lines = []
    with atomic_write(out_root / f"{split}.zip", "wb") as f, zipfile.ZipFile(f, "w", zipfile.ZIP_STORED) as zf:
        for path, label in samples:
            member = path.relative_to(folder_root / split).as_posix()
            zf.write(path, member)
            lines.append(f"{member}\t{label}")
    write_text_atomic(out_root / f"{split}_map.txt", "\n".join(lines) + "\n")


def _csv_split(folder_root: Path, out_root: Path, split: str, samples: list[tuple[Path, int]]) -> None:
    classes = FolderLayout.classes(folder_root)
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(["path", "label"])
    writer.writerows([os.path.relpath(p, out_root.resolve()), classes[label]] for p, label in samples)
    write_text_atomic(out_root / f"{split}.csv", text.getvalue())


def write_txt_lists(folder_root: str | Path, out_root: str | Path) -> Path:
    """``out_root/{split}.txt`` (paths relative to ``out_root``) and ``classes.txt`` for a folder dataset."""
    return _convert(folder_root, out_root, _txt_split)


def write_zip_archives(folder_root: str | Path, out_root: str | Path) -> Path:
    """``out_root/{split}.zip`` with ``{split}_map.txt`` (``member<TAB>label``) and ``classes.txt``."""
    return _convert(folder_root, out_root, _zip_split)


def write_csv_tables(folder_root: str | Path, out_root: str | Path) -> Path:
    """``out_root/{split}.csv`` (header ``path,label``; paths relative to ``out_root``, labels class names)
    and ``classes.txt`` for a folder dataset."""
    return _convert(folder_root, out_root, _csv_split)


def _wds_split(jobs: int, max_samples: int) -> SplitWriter:
    """A split writer of shards (:func:`dataloader.shards.write_wds_split`) of at most ``max_samples`` samples:
    records in a seeded shuffled order (a shard of one class would starve the shuffle buffer), keyed by their
    path in the split without suffix."""
    def write(folder_root: Path, out_root: Path, split: str, samples: list[tuple[Path, int]]) -> None:
        order = list(samples)
        random.Random(0).shuffle(order)
        keys = [re.sub(r"[./]", "_", path.relative_to(folder_root / split).with_suffix("").as_posix())
                for path, _ in order]
        records = ((key, path.read_bytes(), label) for key, (path, label) in zip(keys, order))
        write_wds_split(out_root, split, records, FolderLayout.classes(folder_root), jobs, max_samples)
    return write


def write_wds_shards(folder_root: str | Path, out_root: str | Path, jobs: int = 1,
                     max_samples: int = DEFAULT_SHARD_SAMPLES) -> Path:
    """``out_root/{split}-NNNNNN.tar`` WebDataset shards of at most ``max_samples`` samples, with ``_info.json``
    (and ``classes.txt``)."""
    return _convert(folder_root, out_root, _wds_split(jobs, max_samples))
