"""The softmax head: cross-entropy over mutually exclusive classes.

``p = softmax(logits)``; term ``ic = -t_ic * log p_ic``, active where ``t_ic > 0`` (hard labels without
smoothing: only the true class). Per-sample loss = **sum** over classes of the weighted terms.

Cost matrix on this head: the only active term of a hard-labelled sample is its true class, so a
per-class weight cannot express "confusing y with c is expensive". Instead sample ``i``'s loss is
multiplied by the expected cost of its current prediction, ``sum_c M[y_i, c] * p_ic`` (detached).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import Head, to_soft_targets
from .loss import ModulatedLoss

__all__ = ["SoftmaxHead", "SoftmaxCrossEntropy", "to_soft_targets"]


class SoftmaxHead(Head):
    name = "softmax"

    def probs(self, logits: torch.Tensor) -> torch.Tensor:
        return logits.softmax(dim=1)

    def terms(self, logits: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        active = t > 0
        # where(), not t * log p: a class with t = 0 and p = 0 gives 0, not 0 * -inf = nan
        terms = torch.where(active, -t * F.log_softmax(logits, dim=1), torch.zeros_like(logits))
        return terms, active

    def reduce(self, terms: torch.Tensor) -> torch.Tensor:
        return terms.sum(dim=1)

    def cost_weights(self, cost: torch.Tensor, labels: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
        return (cost[labels] * p).sum(dim=1, keepdim=True)


class SoftmaxCrossEntropy(ModulatedLoss):
    """``mean_i w_i * sum_c -t_ic log softmax(x_i)_c``, with no modifiers.

    ``target`` is class indices or soft targets (mixup, distillation); ``weight`` optional per-sample
    weights (curriculum). The reduction is the plain mean over the batch of the weighted per-sample
    losses, so a sample of weight 0 contributes no gradient.
    """

    def __init__(self, label_smoothing: float = 0.0):
        super().__init__(SoftmaxHead(), label_smoothing=label_smoothing)
