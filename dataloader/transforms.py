"""The transform factory: uint8 ``3 x H x W`` tensor in, uint8 tensor of the network size out.

Normalisation is not here: batches are converted to float and normalised on the device in one step
(:class:`dataloader.loader.BatchPreprocessor`), which is much cheaper than doing it per image.
"""
from __future__ import annotations

import math
import random
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn as nn
from torchvision.transforms import InterpolationMode, v2
from torchvision.transforms.v2 import functional as F

INTERPOLATIONS = ("bilinear", "bicubic")  # --interpolation: the resampling of every resize (antialiased)


def interpolation_mode(name: str) -> InterpolationMode:
    """torchvision's mode for an ``--interpolation`` name; an unknown name is a ValueError listing the valid ones."""
    if name not in INTERPOLATIONS:
        raise ValueError(f"unknown interpolation {name!r}; choose {' or '.join(INTERPOLATIONS)}")
    return InterpolationMode(name)


def letterbox_geometry(height: int, width: int, size: Sequence[int]) -> tuple[int, int, int, int]:
    """``(new_h, new_w, top, left)``: the aspect-preserving resize that fits ``size`` and its centring offsets."""
    out_h, out_w = size
    scale = min(out_h / height, out_w / width)
    new_h, new_w = max(1, round(height * scale)), max(1, round(width * scale))
    return new_h, new_w, (out_h - new_h) // 2, (out_w - new_w) // 2


def center_crop_resize(image_size: Sequence[int], crop_pct: float) -> int:
    """The shorter side ``--eval_resize center_crop`` resizes to before its centre crop: floor(min(H, W) / crop_pct),
    as timm's ``transforms_imagenet_eval`` computes its scale size (``math.floor``)."""
    return math.floor(min(image_size) / crop_pct)


class Letterbox(nn.Module):
    """Resize keeping the aspect ratio (``interpolation``, antialiased), then pad (centred, with ``fill``)
    to exactly ``size``."""

    def __init__(self, size: Sequence[int], fill: int = 0, interpolation: str = "bilinear"):
        super().__init__()
        self.size, self.fill = (int(size[0]), int(size[1])), fill
        self.interpolation = interpolation_mode(interpolation)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        h, w = image.shape[-2:]
        new_h, new_w, top, left = letterbox_geometry(h, w, self.size)
        if (new_h, new_w) != (h, w):
            image = F.resize(image, [new_h, new_w], interpolation=self.interpolation, antialias=True)
        if (new_h, new_w) != self.size:
            out = image.new_full((*image.shape[:-2], *self.size), self.fill)
            out[..., top:top + new_h, left:left + new_w] = image
            image = out
        return image

    def extra_repr(self) -> str:
        return f"size={self.size}, fill={self.fill}, interpolation={self.interpolation.value}"


def create_transform(train: bool, image_size: Sequence[int], *, train_resize: str = "letterbox",
                     rrc_scale: Sequence[float] = (0.08, 1.0), hflip: float = 0.0,
                     eval_resize: str = "letterbox", crop_pct: float = 0.875, policy: nn.Module | None = None,
                     random_erasing: float = 0.0, interpolation: str = "bilinear") -> nn.Module:
    """Geometry for training or evaluation images (see ``--train_resize``/``--eval_resize``); every resize
    resamples with ``interpolation`` (``--interpolation``: the pretrained weights' own unless set).

    Training only: ``policy`` (a per-image augmentation from :func:`dataloader.enhancement.create_policy`)
    runs after the geometry, and ``random_erasing > 0`` appends ``RandomErasing`` with that probability
    (fill 0) last. Both are ignored for evaluation; the defaults add nothing.
    """
    if not 0.0 <= random_erasing <= 1.0:
        raise ValueError(f"random_erasing={random_erasing} must be a probability in [0, 1]")
    size = [int(image_size[0]), int(image_size[1])]
    mode = interpolation_mode(interpolation)
    if train:
        if train_resize == "letterbox":
            ops: list[nn.Module] = [Letterbox(size, interpolation=interpolation)]
        elif train_resize == "rrc":
            ops = [v2.RandomResizedCrop(size, scale=tuple(rrc_scale), interpolation=mode, antialias=True)]
        else:
            raise ValueError(f"unknown train_resize {train_resize!r}; choose letterbox or rrc")
        if hflip > 0:
            ops.append(v2.RandomHorizontalFlip(hflip))
        if policy is not None:
            ops.append(policy)
        if random_erasing > 0:
            ops.append(v2.RandomErasing(random_erasing, value=0))
    elif eval_resize == "letterbox":
        ops = [Letterbox(size, interpolation=interpolation)]
    elif eval_resize == "center_crop":
        ops = [v2.Resize(center_crop_resize(size, crop_pct), interpolation=mode, antialias=True), v2.CenterCrop(size)]
    else:
        raise ValueError(f"unknown eval_resize {eval_resize!r}; choose letterbox or center_crop")
    return v2.Compose(ops)


def call_seeded(fn: Callable[[torch.Tensor], torch.Tensor], image: torch.Tensor, seed: int) -> torch.Tensor:
    """``fn(image)`` with torch's, Python's and NumPy's global RNGs seeded from ``seed``, and restored
    afterwards: a random transform becomes a pure function of the seed.

    Transforms draw their parameters on the CPU generator, so that is the one seeded:
    ``torch.manual_seed`` would also queue a CUDA seeding, which records a stack trace on each call
    and cost more than decoding the image.
    """
    with torch.random.fork_rng(devices=[]):
        py_state, np_state = random.getstate(), np.random.get_state()
        torch.default_generator.manual_seed(seed)
        random.seed(seed)
        np.random.seed(seed % 2**32)
        try:
            return fn(image)
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)
