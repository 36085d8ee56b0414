"""Multi-scale training: resize each float batch to a random scale of the base size.

The scale is drawn from the ``torch.Generator`` passed in (on the CPU), never the global RNGs, so a run
that seeds it from (seed, epoch, step) sees the same sizes after a resume. Sides are rounded to a
multiple of ``multiple`` (8 by default), which keeps the set of shapes small (cuDNN autotuning and
compiled graphs see only a few) and strides tidy.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F


class MultiScale:
    """Resize ``N x 3 x H x W`` float batches by a scale ``s ~ U[1 - jitter, 1 + jitter]`` of ``base_size``.

    Both sides are multiplied by the same ``s`` (aspect kept up to rounding), then rounded to the nearest
    multiple of ``multiple`` (at least ``multiple``). Bilinear, antialiased when downscaling.
    """

    def __init__(self, base_size: Sequence[int], jitter: float = 0.15, multiple: int = 8):
        if len(base_size) != 2 or min(base_size) < 1:
            raise ValueError(f"base_size={base_size!r} must be (height, width) with positive sides")
        if not 0.0 <= jitter < 1.0:
            raise ValueError(f"jitter={jitter} must be in [0, 1)")
        if multiple < 1:
            raise ValueError(f"multiple={multiple} must be >= 1")
        self.base_size = (int(base_size[0]), int(base_size[1]))
        self.jitter, self.multiple = float(jitter), int(multiple)

    def __repr__(self) -> str:
        return f"MultiScale(base_size={self.base_size}, jitter={self.jitter}, multiple={self.multiple})"

    def size_for(self, scale: float) -> tuple[int, int]:
        """The ``(height, width)`` used for a scale factor."""
        m = self.multiple
        h, w = (max(m, int(round(side * scale / m)) * m) for side in self.base_size)
        return h, w

    def draw_size(self, generator: torch.Generator) -> tuple[int, int]:
        """One random ``(height, width)`` from ``generator``."""
        u = float(torch.rand((), generator=generator, dtype=torch.float64))
        return self.size_for(1.0 - self.jitter + 2.0 * self.jitter * u)

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        if images.ndim != 4 or not images.is_floating_point():
            raise ValueError(f"expected a float N x C x H x W batch, got {images.dtype} {tuple(images.shape)}")
        size = self.draw_size(generator)
        in_h, in_w = images.shape[-2:]
        if size == (in_h, in_w):
            return images
        antialias = size[0] < in_h or size[1] < in_w
        return F.interpolate(images, size=size, mode="bilinear", align_corners=False, antialias=antialias)
