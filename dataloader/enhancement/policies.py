"""Per-image augmentation policies on uint8 ``3 x H x W`` tensors, picked by name from a registry.

Each policy is an ``nn.Module`` that returns a uint8 tensor of the input size. They draw their
randomness from torch's global RNG only, which :class:`dataloader.datasets.ClassificationDataset`
seeds per sample, so an augmented epoch is a pure function of (run seed, epoch, index).

  autoaugment     torchvision AutoAugment with its ImageNet, CIFAR-10 or SVHN policy
  randaugment     torchvision RandAugment (``n`` ops of magnitude ``m``)
  trivialaugment  torchvision TrivialAugmentWide (one op, random magnitude, no settings)
  custom          our own light policy; each strength is a field of :class:`CustomPolicyConfig`
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn as nn
from torchvision.transforms import InterpolationMode, v2
from torchvision.transforms.v2 import functional as F

AUTOAUGMENT_POLICIES = {"imagenet": v2.AutoAugmentPolicy.IMAGENET, "cifar10": v2.AutoAugmentPolicy.CIFAR10,
                        "svhn": v2.AutoAugmentPolicy.SVHN}


@dataclass
class CustomPolicyConfig:
    """Strengths of the custom policy; a strength of 0 switches that op off.

    Ops run in this order: crop, flips, rotation (geometry), then colour jitter, blur and noise.
    """
    hflip: float = 0.5           # probability of a horizontal flip
    vflip: float = 0.0           # probability of a vertical flip (off: most photos have an up)
    rotate: float = 10.0         # maximum rotation in degrees, drawn from [-rotate, rotate]
    crop_min_scale: float = 0.8  # RandomResizedCrop back to the same size, area scale in (min, 1); 0 or 1 = off
    blur_prob: float = 0.1       # probability of a Gaussian blur ...
    blur_sigma: float = 1.5      # ... with sigma drawn from [0.1, blur_sigma] (0 = off)
    noise_std: float = 3.0       # std of additive Gaussian noise, in 0..255 units
    color_jitter: float = 0.2    # brightness, contrast and saturation factor s, hue s/4

    def __post_init__(self) -> None:
        for name in ("hflip", "vflip", "blur_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"custom policy {name}={getattr(self, name)} must be a probability in [0, 1]")
        for name in ("rotate", "blur_sigma", "noise_std", "color_jitter", "crop_min_scale"):
            if getattr(self, name) < 0:
                raise ValueError(f"custom policy {name}={getattr(self, name)} must be >= 0")
        if self.crop_min_scale > 1.0:
            raise ValueError(f"custom policy crop_min_scale={self.crop_min_scale} must be in [0, 1] (0 or 1 = off)")
        if self.color_jitter > 2.0:
            raise ValueError(f"custom policy color_jitter={self.color_jitter} must be <= 2 (hue = s/4 <= 0.5)")


class RandomGaussianBlur(nn.Module):
    """With probability ``p``, blur with a sigma drawn from ``[0.1, max_sigma]``.

    The kernel (about 3 sigma each side) is chosen per image and capped to fit it, so tiny images work.
    """

    def __init__(self, p: float, max_sigma: float):
        super().__init__()
        self.p, self.max_sigma = p, max_sigma

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        if torch.rand(()) >= self.p:
            return image
        low = min(0.1, self.max_sigma)
        sigma = float(torch.empty(()).uniform_(low, self.max_sigma))
        h, w = image.shape[-2:]
        radius = min(math.ceil(3 * sigma), min(h, w) - 1)  # reflect padding needs radius < side
        if radius < 1:
            return image
        return F.gaussian_blur(image, [2 * radius + 1, 2 * radius + 1], [sigma, sigma])

    def extra_repr(self) -> str:
        return f"p={self.p}, max_sigma={self.max_sigma}"


class GaussianNoise(nn.Module):
    """Add N(0, std^2) noise (``std`` in 0..255 units) in float, then round and clamp back to uint8."""

    def __init__(self, std: float):
        super().__init__()
        self.std = std

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        noise = torch.randn(image.shape, dtype=torch.float32).to(image.device)
        return (image.float() + noise * self.std).round_().clamp_(0, 255).to(torch.uint8)

    def extra_repr(self) -> str:
        return f"std={self.std}"


class SameSizeResizedCrop(nn.Module):
    """A RandomResizedCrop (area scale in ``(min_scale, 1)``) back to the input's own size."""

    def __init__(self, min_scale: float):
        super().__init__()
        self.min_scale = min_scale

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        size = [int(image.shape[-2]), int(image.shape[-1])]
        return v2.RandomResizedCrop(size, scale=(self.min_scale, 1.0), antialias=True)(image)

    def extra_repr(self) -> str:
        return f"min_scale={self.min_scale}"


def build_custom_policy(config: CustomPolicyConfig | None = None) -> nn.Module:
    """The custom policy: only the ops whose strength is non-zero (all zero gives the identity)."""
    c = config if config is not None else CustomPolicyConfig()
    ops: list[nn.Module] = []
    if 0.0 < c.crop_min_scale < 1.0:
        ops.append(SameSizeResizedCrop(c.crop_min_scale))
    if c.hflip > 0:
        ops.append(v2.RandomHorizontalFlip(c.hflip))
    if c.vflip > 0:
        ops.append(v2.RandomVerticalFlip(c.vflip))
    if c.rotate > 0:
        ops.append(v2.RandomRotation(c.rotate, interpolation=InterpolationMode.BILINEAR, fill=0))
    if c.color_jitter > 0:
        s = c.color_jitter
        ops.append(v2.ColorJitter(brightness=s, contrast=s, saturation=s, hue=s / 4))
    if c.blur_prob > 0 and c.blur_sigma > 0:
        ops.append(RandomGaussianBlur(c.blur_prob, c.blur_sigma))
    if c.noise_std > 0:
        ops.append(GaussianNoise(c.noise_std))
    return v2.Compose(ops) if ops else nn.Identity()


def _autoaugment(*, autoaugment_policy: str = "imagenet", **_) -> nn.Module:
    key = autoaugment_policy.lower()
    if key not in AUTOAUGMENT_POLICIES:
        raise ValueError(f"unknown autoaugment policy {autoaugment_policy!r}; "
                         f"choose from {', '.join(AUTOAUGMENT_POLICIES)}")
    return v2.AutoAugment(AUTOAUGMENT_POLICIES[key])


def _randaugment(*, randaugment_n: int = 2, randaugment_m: int = 9, **_) -> nn.Module:
    if randaugment_n < 1 or not 0 <= randaugment_m <= 30:
        raise ValueError(f"randaugment needs n >= 1 and 0 <= m <= 30 (got n={randaugment_n}, m={randaugment_m})")
    return v2.RandAugment(num_ops=int(randaugment_n), magnitude=int(randaugment_m))


def _trivialaugment(**_) -> nn.Module:
    return v2.TrivialAugmentWide()


def _custom(*, custom: CustomPolicyConfig | None = None, **_) -> nn.Module:
    return build_custom_policy(custom)


POLICIES: dict[str, Callable[..., nn.Module]] = {
    "autoaugment": _autoaugment,
    "randaugment": _randaugment,
    "trivialaugment": _trivialaugment,
    "custom": _custom,
}


def create_policy(name: str, *, autoaugment_policy: str = "imagenet", randaugment_n: int = 2,
                  randaugment_m: int = 9, custom: CustomPolicyConfig | None = None) -> nn.Module:
    """A per-image policy by name (see :data:`POLICIES`); uint8 ``3 x H x W`` in, same size out."""
    key = name.lower()
    if key not in POLICIES:
        raise ValueError(f"unknown augmentation policy {name!r}; choose from {', '.join(POLICIES)}")
    return POLICIES[key](autoaugment_policy=autoaugment_policy, randaugment_n=randaugment_n,
                         randaugment_m=randaugment_m, custom=custom)


__all__ = ["AUTOAUGMENT_POLICIES", "CustomPolicyConfig", "POLICIES", "build_custom_policy", "create_policy"]
