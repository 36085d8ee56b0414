"""Test-time augmentation and ensembles as one model wrapper: ``ProbabilityAverage``.

The wrapper runs each model on each view of the batch (the batch itself, its mirror image, crops, other
scales), averages the probabilities under the models' head (softmax, or per-class sigmoid for multi-label
and ``bce`` models) and returns them as logits again: ``log p`` for softmax (whose softmax is ``p``), the
log-odds ``log p - log(1 - p)`` for sigmoid (whose sigmoid is ``p``). So the one evaluation loop, its losses
(cross-entropy of ``log p`` is the NLL of the averaged probabilities), top-k, mAP and thresholds need no
change, and the same wrapper exports to ONNX with the views folded into the graph. Each model's logits are
divided by its ``temperatures`` entry (its ``--calibrate`` temperature) before its probabilities are taken; the
returned logits are multiplied by ``output_temperature``, so that a consumer which divides by the first
checkpoint's temperature (as every mode and the demo do) gets the averaged probabilities back.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

TTA_MODES = ("hflip", "five_crop", "ten_crop", "scales")
SIGMOID_HEADS = ("bce", "asl")
CROP_FRACTION = 0.875  # five_crop/ten_crop: each crop's side as a share of the image's (then resized back)
_EPS = 1e-7  # probabilities are clamped into [eps, 1 - eps] before their logarithm (no inf logits)


def five_crops(images: torch.Tensor, size: tuple[int, int]) -> list[torch.Tensor]:
    """The four corner crops and the centre crop (torchvision's order: top-left, top-right, bottom-left,
    bottom-right, centre) of side ``size`` (h, w) of an NCHW batch."""
    h, w = images.shape[-2:]
    ch, cw = size
    if ch > h or cw > w:
        raise ValueError(f"a crop of {ch}x{cw} does not fit images of {h}x{w}")
    top, left = int(round((h - ch) / 2.0)), int(round((w - cw) / 2.0))
    return [images[..., :ch, :cw], images[..., :ch, w - cw:], images[..., h - ch:, :cw],
            images[..., h - ch:, w - cw:], images[..., top:top + ch, left:left + cw]]


def tta_views(images: torch.Tensor, mode: str | None, scales: Sequence[float] = ()) -> list[torch.Tensor]:
    """The views of an NCHW batch that ``mode`` averages over, each at the batch's own size except
    ``scales``: None → the batch; ``hflip`` → it and its mirror image; ``five_crop`` → the five crops of
    ``CROP_FRACTION`` of each side, resized back; ``ten_crop`` → those and their mirror images; ``scales``
    → the batch resized by each factor of ``scales`` (1.0 is the batch itself)."""
    if mode is None:
        return [images]
    if mode == "hflip":
        return [images, images.flip(-1)]
    if mode in ("five_crop", "ten_crop"):
        h, w = images.shape[-2:]
        crops = five_crops(images, (max(1, round(h * CROP_FRACTION)), max(1, round(w * CROP_FRACTION))))
        crops = [F.interpolate(c, size=(h, w), mode="bilinear", align_corners=False) for c in crops]
        return crops + [c.flip(-1) for c in crops] if mode == "ten_crop" else crops
    if mode == "scales":
        if not scales:
            raise ValueError("--tta scales needs at least one factor, e.g. --tta scales 0.875 1.0 1.125")
        h, w = images.shape[-2:]
        return [images if s == 1.0 else F.interpolate(images, size=(max(1, round(h * s)), max(1, round(w * s))),
                                                      mode="bilinear", align_corners=False) for s in scales]
    raise ValueError(f"unknown TTA mode {mode!r}; choose one of {', '.join(TTA_MODES)}")


def probabilities_to_logits(probs: torch.Tensor, sigmoid: bool) -> torch.Tensor:
    """Logits whose softmax (or, with ``sigmoid``, per-class sigmoid) gives back ``probs``."""
    p = probs.clamp(_EPS, 1 - _EPS) if sigmoid else probs.clamp_min(_EPS)
    return torch.log(p) - torch.log1p(-p) if sigmoid else torch.log(p)


class ProbabilityAverage(nn.Module):
    """``models`` (one or several of the same classes: an ensemble) run on every ``tta_views`` view; the
    mean of their probabilities under ``head``, returned as logits (module docstring)."""

    def __init__(self, models: Sequence[nn.Module], head: str = "softmax", tta: str | None = None,
                 scales: Sequence[float] = (), temperatures: Sequence[float] | None = None,
                 output_temperature: float = 1.0):
        super().__init__()
        if not models:
            raise ValueError("ProbabilityAverage needs at least one model")
        self.models = nn.ModuleList(models)
        self.sigmoid = head in SIGMOID_HEADS
        self.tta, self.scales = tta, tuple(float(s) for s in scales)
        self.temperatures = tuple(float(t) for t in temperatures) if temperatures is not None else (1.0,) * len(models)
        if len(self.temperatures) != len(models):
            raise ValueError(f"{len(self.temperatures)} temperatures for {len(models)} models")
        self.output_temperature = float(output_temperature)

    def member_probabilities(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Each model's probabilities, averaged over the views (float32): the per-model numbers."""
        views = tta_views(images, self.tta, self.scales)
        out = []
        for model, temperature in zip(self.models, self.temperatures):
            probs = [self._probs(model(view).float() / temperature) for view in views]
            out.append(torch.stack(probs).mean(0))
        return out

    def _probs(self, logits: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        return logits.sigmoid() if self.sigmoid else logits.softmax(dim=1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        average = torch.stack(self.member_probabilities(images)).mean(0)
        return probabilities_to_logits(average, self.sigmoid) * self.output_temperature
