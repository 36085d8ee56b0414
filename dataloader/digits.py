"""scikit-learn's handwritten digits as a PNG class-folder dataset (the bundled default data): the builder
behind the ``utils/make_digits.py`` tool.

1,797 real 8x8 images, upscaled to 32x32 RGB, split 70/15/15 stratified with a fixed seed into
``OUT/{train,val,test}/<0-9>/<index>.png``. Idempotent: an existing complete dataset is left alone.
"""
from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

logger = logging.getLogger(__name__)
MARKER = ".complete-v1"
SIZE = 32


def split_indices(labels: np.ndarray, seed: int = 0) -> dict[str, np.ndarray]:
    """Stratified 70/15/15 split of sample indices."""
    from sklearn.model_selection import train_test_split
    idx = np.arange(len(labels))
    train, rest = train_test_split(idx, test_size=0.30, stratify=labels, random_state=seed)
    val, test = train_test_split(rest, test_size=0.50, stratify=labels[rest], random_state=seed)
    return {"train": np.sort(train), "val": np.sort(val), "test": np.sort(test)}


def make_digits(out: str | Path, size: int = SIZE, per_class: int | None = None) -> Path:
    """Write the dataset to ``out`` unless a complete one (of the same ``per_class``) is already there."""
    from sklearn.datasets import load_digits
    out = Path(out)
    description = "sklearn load_digits, 32x32 RGB PNG, stratified 70/15/15, seed 0\n"
    if per_class is not None:
        description += f"first {per_class} images per class and split\n"
    if (out / MARKER).is_file() and (out / MARKER).read_text() == description:
        logger.info("digits dataset already complete at %s", out)
        return out
    if out.exists():
        shutil.rmtree(out)  # an interrupted earlier write
    tmp = out.with_name(out.name + ".partial")
    if tmp.exists():
        shutil.rmtree(tmp)
    digits = load_digits()
    images = (digits.images / 16.0 * 255.0).round().astype(np.uint8)
    for split, indices in split_indices(digits.target).items():
        if per_class is not None:
            indices = np.concatenate([indices[digits.target[indices] == c][:per_class] for c in range(10)])
        for i in indices:
            folder = tmp / split / str(digits.target[i])
            folder.mkdir(parents=True, exist_ok=True)
            img = Image.fromarray(images[i], mode="L").resize((size, size), Image.BICUBIC).convert("RGB")
            img.save(folder / f"{i:04d}.png")
    (tmp / MARKER).write_text(description)
    tmp.rename(out)
    logger.info("wrote %d digits images to %s", sum(1 for _ in out.rglob("*.png")), out)
    return out
