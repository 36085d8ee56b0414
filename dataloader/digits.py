"""scikit-learn's handwritten digits as bundled datasets: the builder behind the ``utils/make_digits.py`` tool.

1,797 real 8x8 images, upscaled to 32x32 RGB, split 70/15/15 stratified with a fixed seed:

- :func:`make_digits`, the single-label set: ``OUT/{train,val,test}/<0-9>/<index>.png``;
- :func:`make_mosaic`, the multi-label set: 64x64 mosaics of 1-3 digits in the cells of a 2x2 grid (the
  other cells black), labelled by the set of digits shown, as csv tables (``OUT/{split}.csv``: ``path,label``,
  the label the digits in ascending order joined by one space; ``OUT/images/{split}/NNNNN.png``;
  ``OUT/classes.txt``). A split's mosaics use only that split's source digits (the same split as above).

Both are written whole into a staging folder renamed into place, and are idempotent: an existing complete
dataset (of the same description) is left alone.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable, Mapping

import numpy as np
from PIL import Image

from utils.atomic import replace_folder, temp_dir

logger = logging.getLogger(__name__)
MARKER = ".complete-v1"
SIZE = 32
SPLITS = ("train", "val", "test")
MOSAIC_SIZES = {"train": 4000, "val": 800, "test": 800}  # mosaics per split
GRID = 2  # a mosaic is GRID x GRID cells of SIZE x SIZE pixels
Mosaic = tuple[tuple[int, int], ...]  # (cell, source image index) pairs, cells ascending; cell = row * GRID + col


def split_indices(labels: np.ndarray, seed: int = 0) -> dict[str, np.ndarray]:
    """Stratified 70/15/15 split of sample indices."""
    from sklearn.model_selection import train_test_split
    idx = np.arange(len(labels))
    train, rest = train_test_split(idx, test_size=0.30, stratify=labels, random_state=seed)
    val, test = train_test_split(rest, test_size=0.50, stratify=labels[rest], random_state=seed)
    return {"train": np.sort(train), "val": np.sort(val), "test": np.sort(test)}


def load_digits_uint8() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits as ``(images N x 8 x 8 uint8 in 0..255, targets N)``."""
    from sklearn.datasets import load_digits
    digits = load_digits()
    return (digits.images / 16.0 * 255.0).round().astype(np.uint8), digits.target


def upscale(image: np.ndarray, size: int = SIZE) -> Image.Image:
    """One 8x8 grey digit as a ``size`` x ``size`` RGB picture (bicubic), as both datasets draw it."""
    return Image.fromarray(image, mode="L").resize((size, size), Image.BICUBIC).convert("RGB")


def _write_whole(out: Path, description: str, fill: Callable[[Path], None]) -> bool:
    """Write a dataset to ``out`` through ``fill(staging_folder)`` and a rename, unless a complete one of the
    same ``description`` is there (returns False then). Each process stages in a folder of its own (removed
    whatever happens), so builders running at once (torchrun ranks, sweep variants, parallel benchmarks) never
    write into each other's files: the first to finish puts its complete folder in place, the others find it
    complete and drop theirs. A leftover of an interrupted write, or a dataset of another description, is
    replaced."""
    if _complete(out, description):
        logger.info("dataset already complete at %s", out)
        return False
    with temp_dir(out) as tmp:
        staged = tmp / out.name
        staged.mkdir()
        fill(staged)
        (staged / MARKER).write_text(description)
        if _complete(out, description):  # another process finished the same dataset meanwhile
            return False
        replace_folder(staged, out)
    return True


def _complete(out: Path, description: str) -> bool:
    """Whether ``out`` holds a finished dataset of ``description`` (its marker is written last)."""
    return (out / MARKER).is_file() and (out / MARKER).read_text() == description


def make_digits(out: str | Path, size: int = SIZE, per_class: int | None = None) -> Path:
    """Write the dataset to ``out`` unless a complete one (of the same ``per_class``) is already there."""
    out = Path(out)
    description = "sklearn load_digits, 32x32 RGB PNG, stratified 70/15/15, seed 0\n"
    if per_class is not None:
        description += f"first {per_class} images per class and split\n"

    def fill(tmp: Path) -> None:
        images, targets = load_digits_uint8()
        for split, indices in split_indices(targets).items():
            if per_class is not None:
                indices = np.concatenate([indices[targets[indices] == c][:per_class] for c in range(10)])
            for i in indices:
                folder = tmp / split / str(targets[i])
                folder.mkdir(parents=True, exist_ok=True)
                upscale(images[i], size).save(folder / f"{i:04d}.png")

    if _write_whole(out, description, fill):
        logger.info("wrote %d digits images to %s", sum(1 for _ in out.rglob("*.png")), out)
    return out


def mosaic_plan(targets: np.ndarray, sizes: Mapping[str, int] = MOSAIC_SIZES, seed: int = 0) -> dict[str, list[Mosaic]]:
    """What each mosaic of each split shows: 1-3 cells (uniform) of the 2x2 grid, each a distinct source image
    of that split (:func:`split_indices`), drawn by a generator seeded per split (a split's mosaics do not
    change with another split's size). Raises ValueError when train does not show every digit."""
    parts = split_indices(targets, seed)
    plan: dict[str, list[Mosaic]] = {}
    for n, split in enumerate(SPLITS):
        rng = np.random.default_rng([seed, n])
        plan[split] = []
        for _ in range(sizes[split]):
            count = int(rng.integers(1, 4))
            cells = np.sort(rng.choice(GRID * GRID, size=count, replace=False))
            sources = rng.choice(parts[split], size=count, replace=False)
            plan[split].append(tuple((int(c), int(s)) for c, s in zip(cells, sources)))
    shown = {int(targets[s]) for mosaic in plan["train"] for _, s in mosaic}
    if shown != set(range(10)):
        raise ValueError(f"the {sizes['train']} train mosaics show only the digits {sorted(shown)}; "
                         "write more mosaics (a larger --per_class) so that train shows all ten")
    return plan


def mosaic_label(mosaic: Mosaic, targets: np.ndarray) -> list[int]:
    """The label set of a mosaic: the digits it shows, ascending, each once."""
    return sorted({int(targets[s]) for _, s in mosaic})


def _mosaic_pixels(mosaic: Mosaic, tiles: np.ndarray) -> np.ndarray:
    """The ``GRID*SIZE`` square RGB picture of a mosaic from the upscaled source digits ``tiles``."""
    canvas = np.zeros((GRID * SIZE, GRID * SIZE, 3), dtype=np.uint8)
    for cell, source in mosaic:
        row, col = divmod(cell, GRID)
        canvas[row * SIZE:(row + 1) * SIZE, col * SIZE:(col + 1) * SIZE] = tiles[source]
    return canvas


def make_mosaic(out: str | Path, sizes: Mapping[str, int] = MOSAIC_SIZES, seed: int = 0) -> Path:
    """Write the multi-label mosaic dataset (csv tables, see the module docstring) to ``out`` unless a complete
    one of the same sizes and seed is there."""
    out = Path(out)
    sizes = {split: int(sizes[split]) for split in SPLITS}
    description = (f"sklearn load_digits mosaics: 64x64 RGB PNG, 1-3 digits in a 2x2 grid, label set, "
                   f"sources split stratified 70/15/15 seed {seed}, mosaic seed {seed}, sizes {sizes}\n")

    def fill(tmp: Path) -> None:
        images, targets = load_digits_uint8()
        plan = mosaic_plan(targets, sizes, seed)
        tiles = np.stack([np.asarray(upscale(image)) for image in images])
        for split, mosaics in plan.items():
            (tmp / "images" / split).mkdir(parents=True)
            rows = ["path,label"]
            for i, mosaic in enumerate(mosaics):
                path = f"images/{split}/{i:05d}.png"
                Image.fromarray(_mosaic_pixels(mosaic, tiles)).save(tmp / path)
                rows.append(f"{path},{' '.join(map(str, mosaic_label(mosaic, targets)))}")
            (tmp / f"{split}.csv").write_text("\n".join(rows) + "\n")
        (tmp / "classes.txt").write_text("".join(f"{c}\n" for c in range(10)))

    if _write_whole(out, description, fill):
        logger.info("wrote %s mosaics to %s", sizes, out)
    return out
