"""The BCE head: one independent sigmoid (one-vs-all) per class.

``p = sigmoid(logits)``; targets ``t`` are one-hot from class indices or the given soft targets
(smoothed as ``(1 - eps) * t + eps / C``); term ``ic = BCE(p_ic, t_ic)``, computed stably from the
logits by ``F.binary_cross_entropy_with_logits(reduction='none')``; every term is active.
Per-sample loss = **mean** over classes of the weighted terms, so with no modifiers the loss equals
``F.binary_cross_entropy_with_logits(logits, onehot)`` (reduction ``'mean'``).

Cost matrix on this head: term ``ic`` is weighted by ``M[y_i, c]``. Multi-label targets (multi-hot
sets) are taken as they are: the plain loss is then ``F.binary_cross_entropy_with_logits(logits, t)``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import Head

__all__ = ["BCEHead"]


class BCEHead(Head):
    name = "bce"
    multi_label = True

    def probs(self, logits: torch.Tensor) -> torch.Tensor:
        return logits.sigmoid()

    def terms(self, logits: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        terms = F.binary_cross_entropy_with_logits(logits, t, reduction="none")
        return terms, torch.ones_like(terms, dtype=torch.bool)

    def reduce(self, terms: torch.Tensor) -> torch.Tensor:
        return terms.mean(dim=1)

    def cost_weights(self, cost: torch.Tensor, labels: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
        return cost[labels]
