"""Check every image of a dataset (class folders, txt lists, zip archives, csv tables or Hugging Face datasets):
the logic behind the ``utils/check_images.py`` tool (whose docstring lists what is reported and how).

Each image is fully decoded, with the project's own decoder (as training reads it) and with Pillow
(which notices truncation that libjpeg/libpng tolerate). ``check_dataset`` returns one ``Finding`` per
image (and stray file), ``summarise`` tabulates them and ``move_bad`` moves bad files out of the dataset.
Worker processes run ``_check_task``, which pickles by this module's name.
"""
from __future__ import annotations

import multiprocessing
import os
import shutil
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from PIL import UnidentifiedImageError

from dataloader.datasets import Columns, DatasetError, get_layout
from dataloader.hf import is_hf_folder
from dataloader.io import (
    DEFAULT_MAX_IMAGE_PIXELS,
    ImageDecodeError,
    ImageTooLarge,
    decode_wide,
    is_image_name,
    open_image,
)
from dataloader.labels import LabelSets, label_names
from utils.walk import visible_files, visible_subfolders

SPLITS = ("train", "val", "test")
READ_BY_LAYOUT = ("zip", "hf")  # layouts whose samples are not files: their reader reads them
# Modes worth a look that decode to 8 bits (16-bit images, I;16* and wide I, are told apart by the decoded dtype)
UNUSUAL_MODES = {"CMYK": "CMYK", "I": "32-bit integer", "F": "32-bit float"}


@dataclass(frozen=True)
class Finding:
    """One checked image: where it is, its split and class, and what (if anything) is wrong."""
    split: str
    label: str
    source: str            # a file path, or "<archive>:<member>"
    status: str            # ok | bad | unusual | stray
    reason: str = ""


def is_shard_source(data: str) -> bool:
    """Whether ``data`` names shards rather than a folder: a URL or a brace pattern."""
    return "://" in data or "{" in data


def detect_kind(root: Path) -> str:
    """The dataset layout: WebDataset shards, zip archives, txt lists, csv (or jsonl) tables, a Hugging Face dataset
    (save_to_disk or parquet files), or class folders."""
    if (root / "_info.json").is_file() or any(root.glob("train-*.tar")):
        return "wds"
    if (root / "train.zip").is_file():
        return "zip"
    if (root / "train.txt").is_file():
        return "txt"
    if any((root / f"{stem}.{ext}").is_file() for stem in ("train", "labels") for ext in ("csv", "jsonl")):
        return "csv"
    if is_hf_folder(root):
        return "hf"
    return "folder"


def check_bytes(data: bytes, name: str, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> tuple[str, str]:
    """``(status, reason)`` for one encoded image; one over ``max_pixels`` (0: no limit) is bad, from its header."""
    if not data:
        return "bad", "zero-byte file"
    try:
        with open_image(data, name, max_pixels) as im:
            mode, info = im.mode, dict(im.info)
            im.load()
    except ImageTooLarge as e:
        return "bad", f"too large: {str(e).removeprefix(name + ': ')}"
    except UnidentifiedImageError:
        return "bad", "not an image (Pillow cannot identify it)"
    except (OSError, SyntaxError, ValueError) as e:
        kind = "truncated" if "truncated" in str(e).lower() else "unreadable"
        return "bad", f"{kind}: {e}"
    try:
        image = decode_wide(data, name, max_pixels)
    except ImageDecodeError as e:
        return "bad", f"unreadable by the training decoder: {e}"
    if image.dtype == torch.uint16:  # 16-bit grey or colour (Pillow names a 16-bit colour PNG/TIFF RGB)
        return "unusual", (f"16-bit image (mode {mode}); training rounds it to 8 bits unless --bit_depth 16 "
                           f"keeps the full range")
    if mode in UNUSUAL_MODES:
        return "unusual", f"{UNUSUAL_MODES[mode]} image (mode {mode}); training converts it to 8-bit RGB"
    if mode in ("P", "PA") and ("transparency" in info or mode == "PA"):
        return "unusual", f"palette image with transparency (mode {mode}); training drops the transparency"
    return "ok", ""


# split, class, source, how to name it, max_pixels, and the reader of a layout whose sources are not files (zip
# archives: the member's size is checked from the archive's directory before it is inflated; Hugging Face rows)
Task = tuple[str, str, str, str, int, "Callable[[str], bytes] | None"]


def _check_task(task: Task) -> Finding:
    split, label, source, name, max_pixels, reader = task
    try:
        if reader is None:
            with open(source, "rb") as f:
                data = f.read()
        else:
            data = reader(source)
    except OSError as e:
        return Finding(split, label, name, "bad", f"cannot read: {e}")
    except ImageTooLarge as e:
        return Finding(split, label, name, "bad", f"too large: {str(e).removeprefix(name + ': ')}")
    status, reason = check_bytes(data, name, max_pixels)
    return Finding(split, label, name, status, reason)


def _name(root: Path, split: str, source: str, layout, reader) -> str:
    """How findings name a sample: its file, ``<archive>:<member>``, or the layout's own description (a row)."""
    describe = getattr(layout, "describe", None)
    if describe is not None:
        return describe(root, split, source)
    return source if reader is None else f"{root / split}.zip:{source}"


def _tasks(root: Path, kind: str, max_pixels: int,
           columns: Columns | None = None) -> tuple[list[Task], list[Finding]]:
    """Every image to check, and findings already known without decoding (stray files, list errors).

    A structural error (a malformed line, a missing file, an unknown class) is one bad finding, and the
    rest of its split is still checked; one that several splits meet (a bad row of a csv labels table
    that holds every split) is reported once."""
    layout = get_layout(kind, columns)
    findings: list[Finding] = []
    try:
        class_names = layout.classes(root)
    except DatasetError as e:
        return [], [Finding("-", "-", str(root), "bad", str(e))]
    tasks: list[Task] = []
    reported: set[str] = set()
    for split in SPLITS:
        errors: list[DatasetError] = []
        try:
            if not layout.exists(root, split):
                continue
            samples = layout.samples(root, split, class_names, errors=errors)
        except DatasetError as e:  # nothing of the split can be read (e.g. not a zip archive)
            errors.append(e)
            samples = []
        findings += [Finding(split, "-", str(root), "bad", str(e)) for e in errors if str(e) not in reported]
        reported |= {str(e) for e in errors}
        reader = layout.reader(root, split, max_pixels) if kind in READ_BY_LAYOUT and samples else None
        tasks += [(split, label_names(label, class_names), source, _name(root, split, source, layout, reader),
                   max_pixels, reader) for source, label in samples]
        if kind == "folder":
            for class_dir in visible_subfolders(root / split):  # the files training sees, less its images
                findings += [Finding(split, class_dir.name, str(f), "stray", "not an image extension: training "
                                     "ignores it") for f in visible_files(class_dir) if not is_image_name(f.name)]
    return tasks, findings


# split, shard, its sample count, class names, max_pixels, label sets (--multi_label) or None
ShardTask = tuple[str, str, int, list[str], int, LabelSets | None]


def _check_shard(task: ShardTask) -> list[Finding]:
    """Every sample of one shard: an image and a .cls, a label in range, an image that decodes. A sample
    without its .cls or a truncated tar is one bad finding naming the shard (its rest is not read)."""
    from dataloader.shards import ShardError, iter_samples, short_shard
    split, url, count, class_names, max_pixels, sets = task
    findings: list[Finding] = []
    try:
        for key, data, label in iter_samples(url, sets):
            name = f"{url}:{key}"
            top = label if isinstance(label, int) else max(label, default=-1)
            if top >= len(class_names):
                findings.append(Finding(split, str(label), name, "bad", f"label {top} is out of range: there are "
                                        f"{len(class_names)} classes"))
                continue
            findings.append(Finding(split, label_names(label, class_names), name,
                                    *check_bytes(data, name, max_pixels)))
        if len(findings) < count:
            raise short_shard(url, len(findings), count)
    except ShardError as e:
        findings.append(Finding(split, "-", url, "bad", f"{e} (the rest of this shard is not checked)"))
    return findings


def check_shards(root: str, workers: int = 1, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
                 sets: LabelSets | None = None) -> list[Finding]:
    """:func:`check_dataset` for WebDataset shards (``--dataset wds``): one finding per sample, shards read
    ``workers`` at a time; label ``sets``: multi-label shards (``--multi_label``)."""
    from dataloader.shards import ShardSet
    try:
        shard_set = ShardSet(root)
        class_names = shard_set.classes()
        tasks = [(split, shard.url, shard.count, class_names, max_pixels, sets) for split in SPLITS
                 if shard_set.exists(split) for shard in shard_set.shards(split)]
    except DatasetError as e:
        return [Finding("-", "-", str(root), "bad", str(e))]
    if workers > 1 and len(tasks) > 1:
        with multiprocessing.get_context("fork").Pool(workers) as pool:
            return [f for found in pool.imap(_check_shard, tasks) for f in found]
    return [f for task in tasks for f in _check_shard(task)]


def check_dataset(root: str | Path, kind: str | None = None, workers: int = 1, progress: bool = False,
                  max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS, columns: Columns | None = None) -> list[Finding]:
    """Check every image of the dataset at ``root`` (a csv dataset's ``columns``: path and label); returns
    one finding per image (and stray file). ``kind`` None: detected (a URL or a brace pattern names shards)."""
    if kind is None:
        kind = detect_kind(Path(root)) if Path(root).is_dir() else "wds" if is_shard_source(str(root)) else None
    if kind == "wds":
        return check_shards(str(root), workers, max_pixels, columns.sets if columns is not None else None)
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"dataset root {str(root)!r} does not exist")
    tasks, findings = _tasks(root, kind, max_pixels, columns)
    from tqdm import tqdm
    bar = tqdm(total=len(tasks), desc="checking", disable=not progress, dynamic_ncols=True)
    if workers > 1 and len(tasks) > 1:
        with multiprocessing.get_context("fork").Pool(workers) as pool:
            for finding in pool.imap(_check_task, tasks, chunksize=32):
                findings.append(finding)
                bar.update()
    else:
        for task in tasks:
            findings.append(_check_task(task))
            bar.update()
    bar.close()
    return findings


def move_bad(findings: list[Finding], root: Path, target: Path) -> tuple[list[tuple[str, str]], list[str]]:
    """Move bad files below ``target`` keeping their path relative to ``root``; returns ``(moved, kept)``:
    the ``(from, to)`` pairs, and why each other bad file was left where it is.

    Only what lives in the dataset moves: a symbolic link is moved itself (re-made at ``target`` pointing
    to the same file), never the file it points to; a file whose folder lies outside ``root`` (a list line
    naming an outside path, a class folder linked from elsewhere) is left, and so are zip members. A file
    already at the destination is never replaced: the moved one gets a ``.1``, ``.2``... suffix."""
    moved, kept = [], []
    real_root = root.resolve()
    for f in findings:
        src = Path(f.source)
        if f.status != "bad" or not os.path.lexists(src) or (src.is_dir() and not src.is_symlink()):
            continue  # structural errors (the dataset root) and zip members (archive:member)
        folder = src.parent.resolve()
        if not folder.is_relative_to(real_root):
            kept.append(f"{src}: it lies outside the dataset ({folder}); fix or remove it there")
            continue
        dst = _free_path(target / folder.relative_to(real_root) / src.name)
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_symlink():  # the link moves, with a target that still names the same file from its new place
            link = os.readlink(src)
            os.symlink(link if os.path.isabs(link) else os.path.join(os.path.abspath(src.parent), link), dst)
            src.unlink()
        else:
            shutil.move(str(src), dst)
        moved.append((str(src), str(dst)))
    return moved, kept


def _free_path(path: Path) -> Path:
    """``path``, or ``path.1``, ``path.2``... the first that does not exist (a dangling link counts)."""
    candidate, n = path, 0
    while os.path.lexists(candidate):
        n += 1
        candidate = path.with_name(f"{path.name}.{n}")
    return candidate


def summarise(findings: list[Finding]) -> list[str]:
    """Lines of a per-split, per-class table: images, bad, unusual."""
    counts: Counter = Counter()
    for f in findings:
        if f.status != "stray":
            counts[(f.split, f.label, "images")] += 1
        counts[(f.split, f.label, f.status)] += 1
    keys = sorted({(s, c) for s, c, _ in counts})
    lines = [f"{'split':<8}{'class':<24}{'images':>8}{'bad':>6}{'unusual':>9}{'stray':>7}"]
    for split, label in keys:
        lines.append(f"{split:<8}{label[:23]:<24}{counts[(split, label, 'images')]:>8}"
                     f"{counts[(split, label, 'bad')]:>6}{counts[(split, label, 'unusual')]:>9}"
                     f"{counts[(split, label, 'stray')]:>7}")
    return lines
