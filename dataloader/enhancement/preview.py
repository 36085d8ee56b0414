"""Pictures of what the training augmentation does: the first ``n`` samples through the dataset's
transform tiled into one grid, and (``augmented_samples.png``) the first shuffled training batch after the
batch-level strategies too, with each image's (soft) label.

Samples are fetched with ``(index, sample_seed)`` keys whose seeds come from ``seed``, so the same
call draws the same picture every time.
"""
from __future__ import annotations

import itertools
import logging
from pathlib import Path
from typing import Callable, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision.utils import make_grid

from utils.atomic import save_image_atomic

from ..transforms import Letterbox

logger = logging.getLogger(__name__)


def _to_unit_float(image: torch.Tensor, mean: Sequence[float] | None, std: Sequence[float] | None) -> torch.Tensor:
    """A ``3 x H x W`` image as float in [0, 1]: uint8 is divided by 255; float is un-normalised with
    ``mean``/``std`` when given, else taken to be in [0, 1] already."""
    if image.dtype == torch.uint8:
        return image.float() / 255.0
    image = image.float()
    if mean is not None and std is not None:
        image = image * torch.tensor(std, dtype=torch.float32).view(-1, 1, 1) \
            + torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
    return image.clamp(0.0, 1.0)


def make_augmented_grid(dataset: Dataset, n: int = 32, seed: int = 0, mean: Sequence[float] | None = None,
                        std: Sequence[float] | None = None, nrow: int = 8, padding: int = 2) -> torch.Tensor:
    """uint8 ``3 x H x W`` grid of the first ``n`` samples of ``dataset`` as its transform returns them.

    ``dataset[(index, sample_seed)]`` must return the image first (as ClassificationDataset does).
    Images of different sizes (e.g. no resizing transform) are letterboxed to the largest one.
    """
    size = len(dataset)  # type: ignore[arg-type]
    count = min(int(n), size)
    if count < 1:
        raise ValueError(f"cannot preview {n} samples of a dataset with {size} samples")
    g = torch.Generator().manual_seed(int(seed))
    seeds = torch.randint(0, 2**62, (count,), generator=g).tolist()
    images = []
    for index, sample_seed in enumerate(seeds):
        item = dataset[(index, sample_seed)]
        if item is None:  # an undecodable image skipped with --skip_bad_images
            continue
        image = item[0] if isinstance(item, (tuple, list)) else item
        images.append(_to_unit_float(image, mean, std))
    if not images:
        raise ValueError(f"none of the first {count} samples could be decoded")
    sizes = {tuple(im.shape[-2:]) for im in images}
    if len(sizes) > 1:
        size = (max(s[0] for s in sizes), max(s[1] for s in sizes))
        images = [Letterbox(size)(im) for im in images]
    grid = make_grid(torch.stack(images), nrow=nrow, padding=padding)
    return grid.mul(255.0).round_().clamp_(0, 255).to(torch.uint8)


def save_augmented_grid(dataset: Dataset, path: str | Path, n: int = 32, seed: int = 0,
                        mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                        nrow: int = 8) -> Path:
    """Write :func:`make_augmented_grid` as a PNG at ``path`` (parents created) and return the path."""
    path = Path(path)
    grid = make_augmented_grid(dataset, n=n, seed=seed, mean=mean, std=std, nrow=nrow)
    save_image_atomic(Image.fromarray(np.ascontiguousarray(grid.permute(1, 2, 0).numpy())), path)
    logger.info("augmentation preview (%d x %d grid image) written to %s", grid.shape[-1], grid.shape[-2], path)
    return path


BatchHook = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, int, int],
                     Tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]]


def first_training_batch(dataset: Dataset, n: int = 32, seed: int = 0,
                         batch_hook: BatchHook | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``n`` samples of epoch 0 in the training sampler's shuffled order, each through the
    dataset's transform with its own sample seed, then through ``batch_hook`` (mixup/cutmix, multi-scale,
    teacher targets) with the first step's generator: ``(float N x 3 x H x W in [0, 1], targets)``, the
    targets soft (``N x C``) when a strategy made them so.

    The batch-level strategies are linear in the pixels (mixing, resampling), so they give on [0, 1]
    images exactly the picture they give on the normalised ones the model receives.
    """
    from ..loader import SeededSampler
    if hasattr(dataset, "first_items"):  # streamed shards: the first samples of epoch 0 on rank 0
        items = [(item, item[2] if item else -1) for item in dataset.first_items(n)]
    else:
        sampler = SeededSampler(len(dataset), shuffle=True, seed=seed)  # type: ignore[arg-type]
        sampler.set_epoch(0)
        items = [(dataset[key], key[0]) for key in itertools.islice(iter(sampler), n)]
    items = [(item, index) for item, index in items if item is not None]  # --skip_bad_images
    if not items:
        raise ValueError(f"none of the first {n} training samples could be decoded")
    images = [_to_unit_float(item[0], None, None) for item, _ in items]
    if len({tuple(im.shape[-2:]) for im in images}) > 1:
        size = (max(im.shape[-2] for im in images), max(im.shape[-1] for im in images))
        images = [Letterbox(size)(im) for im in images]
    batch = torch.stack(images)
    labels = [item[1] for item, _ in items]  # class indices, or multi-hot label sets (--multi_label)
    target = torch.stack(labels) if isinstance(labels[0], torch.Tensor) else torch.tensor([int(x) for x in labels])
    if batch_hook is not None:
        batch, target, _ = batch_hook(batch, target, torch.tensor([index for _, index in items]), 0, 0)
    return batch.clamp(0.0, 1.0), target


def label_caption(target: torch.Tensor, class_names: Sequence[str]) -> str:
    """A tile's label: the class name, or for a soft target its (at most two) largest classes with weights; a
    label set (multi-hot, weights summing over 1) shows up to four of its labels."""
    if target.ndim == 0:
        return class_names[int(target)]
    multi = float(target.float().sum()) > 1.01
    weights, classes = target.float().topk(min(4 if multi else 2, target.numel()))
    if multi:
        return " ".join(class_names[int(c)] if w >= 0.995 else f"{class_names[int(c)]}:{w:.2f}"
                        for w, c in zip(weights.tolist(), classes.tolist()) if w >= 0.005)
    if weights[0] >= 0.995:
        return class_names[int(classes[0])]
    return " ".join(f"{class_names[int(c)]}:{w:.2f}" for w, c in zip(weights.tolist(), classes.tolist()) if w >= 0.005)


def augmented_batch_sheet(dataset: Dataset, class_names: Sequence[str], n: int = 32, seed: int = 0,
                          batch_hook: BatchHook | None = None, title: str | None = None,
                          columns: int = 8, tile: int = 96) -> np.ndarray:
    """``augmented_samples.png``: :func:`first_training_batch` as a contact sheet of ``tile``-pixel images,
    each captioned with its (soft) label; a uint8 ``H x W x 3`` array."""
    from utils.images import contact_sheet
    images, target = first_training_batch(dataset, n=n, seed=seed, batch_hook=batch_hook)
    pixels = images.mul(255.0).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    tiles = [(pixels[k], label_caption(target[k], class_names), None) for k in range(len(pixels))]
    rows = [(f"{start + 1}-{min(start + columns, len(tiles))}", tiles[start:start + columns])
            for start in range(0, len(tiles), columns)]
    return contact_sheet(rows, tile=tile, columns=columns, title=title)
