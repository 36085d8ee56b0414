"""A picture of what the training augmentation does: the first ``n`` samples through the dataset's
transform, tiled into one grid (a PNG for the run folder, a uint8 tensor for TensorBoard).

Samples are fetched with ``(index, sample_seed)`` keys whose seeds come from ``seed``, so the same
call draws the same picture every time.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision.utils import make_grid

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
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.ascontiguousarray(grid.permute(1, 2, 0).numpy())).save(path, format="PNG")
    logger.info("augmentation preview (%d x %d grid image) written to %s", grid.shape[-1], grid.shape[-2], path)
    return path
