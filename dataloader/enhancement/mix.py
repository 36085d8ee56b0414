"""Batch-level mixup and cutmix, on the float batch after :class:`dataloader.loader.BatchPreprocessor`.

Each sample is mixed with the batch flipped (sample ``i`` with sample ``N-1-i``), as timm's Mixup does in
its 'batch' mode, so one lambda and one box serve the whole batch. Every random draw comes from the
``torch.Generator`` passed in (on the CPU, as Python scalars), never from the global RNGs, so a run that
seeds the generator from (seed, epoch, step) mixes exactly the same way after a resume, on CPU or CUDA.
"""
from __future__ import annotations

import math

import torch


def one_hot_smoothed(target: torch.Tensor, num_classes: int, smoothing: float = 0.0) -> torch.Tensor:
    """``N x C`` float32 targets: ``1 - smoothing + smoothing/C`` on the label, ``smoothing/C`` elsewhere."""
    off = smoothing / num_classes
    out = torch.full((target.shape[0], num_classes), off, dtype=torch.float32, device=target.device)
    return out.scatter_(1, target.long().view(-1, 1), 1.0 - smoothing + off)


def sample_beta(alpha: float, generator: torch.Generator) -> float:
    """One draw of Beta(alpha, alpha) as ``X / (X + Y)`` with ``X, Y ~ Gamma(alpha)`` from ``generator``."""
    x, y = torch._standard_gamma(torch.full((2,), float(alpha), dtype=torch.float64), generator=generator).tolist()
    if x + y <= 0.0:  # both underflowed (tiny alpha): Beta(a, a) with a -> 0 is a fair coin on {0, 1}
        return float(torch.rand((), generator=generator, dtype=torch.float64) < 0.5)
    return x / (x + y)


def _uniform(generator: torch.Generator) -> float:
    return float(torch.rand((), generator=generator, dtype=torch.float64))


class MixupCutmix:
    """Mix a float ``N x 3 x H x W`` batch and return it with soft ``N x C`` targets.

    With probability ``prob`` a batch is mixed; when both alphas are > 0, cutmix is picked with
    probability ``switch_prob``, otherwise whichever alpha is > 0. Lambda ~ Beta(alpha, alpha); for
    cutmix the box covers about ``1 - lambda`` of the image and lambda is then set to the exact
    unpasted fraction. Targets: ``lam * onehot(y) + (1 - lam) * onehot(y_flipped)``, label-smoothed.
    """

    def __init__(self, num_classes: int, mixup_alpha: float = 0.0, cutmix_alpha: float = 0.0, prob: float = 1.0,
                 switch_prob: float = 0.5, label_smoothing: float = 0.0):
        if num_classes < 1:
            raise ValueError(f"num_classes={num_classes} must be >= 1")
        if mixup_alpha < 0 or cutmix_alpha < 0:
            raise ValueError(f"mixup_alpha={mixup_alpha} and cutmix_alpha={cutmix_alpha} must be >= 0")
        for name, value in (("prob", prob), ("switch_prob", switch_prob), ("label_smoothing", label_smoothing)):
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name}={value} must be in [0, 1]")
        self.num_classes, self.mixup_alpha, self.cutmix_alpha = num_classes, mixup_alpha, cutmix_alpha
        self.prob, self.switch_prob, self.label_smoothing = prob, switch_prob, label_smoothing

    @property
    def enabled(self) -> bool:
        """Whether any batch can be mixed at all."""
        return self.prob > 0 and (self.mixup_alpha > 0 or self.cutmix_alpha > 0)

    def __repr__(self) -> str:
        return (f"MixupCutmix(num_classes={self.num_classes}, mixup_alpha={self.mixup_alpha}, "
                f"cutmix_alpha={self.cutmix_alpha}, prob={self.prob}, switch_prob={self.switch_prob}, "
                f"label_smoothing={self.label_smoothing})")

    def _draw(self, generator: torch.Generator) -> tuple[str, float]:
        """``("none" | "mixup" | "cutmix", lambda)`` for one batch."""
        if not self.enabled or _uniform(generator) >= self.prob:
            return "none", 1.0
        if self.mixup_alpha > 0 and self.cutmix_alpha > 0:
            use_cutmix = _uniform(generator) < self.switch_prob
        else:
            use_cutmix = self.cutmix_alpha > 0
        alpha = self.cutmix_alpha if use_cutmix else self.mixup_alpha
        return ("cutmix" if use_cutmix else "mixup"), sample_beta(alpha, generator)

    @staticmethod
    def cutmix_box(height: int, width: int, lam: float, generator: torch.Generator) -> tuple[int, int, int, int]:
        """``(top, bottom, left, right)`` of a box of about ``(1 - lam)`` of the area, centred at random, clipped."""
        ratio = math.sqrt(max(0.0, 1.0 - lam))
        cut_h, cut_w = int(height * ratio), int(width * ratio)
        cy = int(torch.randint(0, height, (), generator=generator))
        cx = int(torch.randint(0, width, (), generator=generator))
        top, bottom = max(cy - cut_h // 2, 0), min(cy + cut_h // 2, height)
        left, right = max(cx - cut_w // 2, 0), min(cx + cut_w // 2, width)
        return top, bottom, left, right

    def __call__(self, images: torch.Tensor, target: torch.Tensor,
                 generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """``(mixed images, soft targets)``; the input batch is not modified (a new tensor is returned)."""
        images, soft, _ = self.mix(images, target, generator)
        return images, soft

    def mix(self, images: torch.Tensor, target: torch.Tensor,
            generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, float]:
        """Like ``__call__`` but ``target`` may already be soft (``N x C``, e.g. teacher targets), and the
        lambda is returned too, so per-sample weights can be mixed the same way."""
        if images.ndim != 4 or target.ndim not in (1, 2) or images.shape[0] != target.shape[0]:
            raise ValueError(f"expected images N x C x H x W and targets N or N x C, got {tuple(images.shape)} "
                             f"and {tuple(target.shape)}")
        kind, lam = self._draw(generator)
        if kind == "mixup":
            images = images * lam + images.flip(0) * (1.0 - lam)
        elif kind == "cutmix":
            h, w = images.shape[-2:]
            top, bottom, left, right = self.cutmix_box(h, w, lam, generator)
            lam = 1.0 - (bottom - top) * (right - left) / float(h * w)
            images = images.clone()
            if bottom > top and right > left:
                images[..., top:bottom, left:right] = images.flip(0)[..., top:bottom, left:right]
        if target.ndim == 1:
            soft = one_hot_smoothed(target, self.num_classes, self.label_smoothing)
        else:
            soft = target.float() * (1.0 - self.label_smoothing) + self.label_smoothing / self.num_classes
        if kind != "none":
            soft = soft * lam + soft.flip(0) * (1.0 - lam)
        return images, soft, lam
