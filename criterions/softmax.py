"""Softmax cross-entropy with label smoothing, soft targets and per-sample weights."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def to_soft_targets(target: torch.Tensor, num_classes: int, label_smoothing: float = 0.0) -> torch.Tensor:
    """Class indices ``N`` or probabilities ``N x C`` -> smoothed probabilities ``N x C``.

    Smoothing follows ``torch.nn.CrossEntropyLoss``: ``(1 - eps) * t + eps / C``.
    """
    if target.dim() == 1:
        target = F.one_hot(target.long(), num_classes).float()
    else:
        target = target.float()
    if label_smoothing > 0:
        target = target * (1.0 - label_smoothing) + label_smoothing / num_classes
    return target


class SoftmaxCrossEntropy(nn.Module):
    """``mean_i w_i * sum_c -t_ic log softmax(x_i)_c``.

    ``target`` is class indices or soft targets (mixup, distillation); ``weight`` optional per-sample
    weights (curriculum). The reduction is the plain mean over the batch of the weighted per-sample
    losses, so a sample of weight 0 contributes no gradient.
    """

    def __init__(self, label_smoothing: float = 0.0):
        super().__init__()
        self.label_smoothing = label_smoothing

    def forward(self, logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
        soft = to_soft_targets(target, logits.shape[1], self.label_smoothing)
        losses = -(soft * F.log_softmax(logits.float(), dim=1)).sum(dim=1)
        if weight is not None:
            losses = losses * weight.to(losses)
        return losses.mean()

    def extra_repr(self) -> str:
        return f"label_smoothing={self.label_smoothing}"
