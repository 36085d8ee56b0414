"""``ModulatedLoss``: a head's loss terms times the product of its modifiers' weights.

    t        = to_soft_targets(target, C, label_smoothing)        # one-hot or given soft targets, smoothed
    t        = t > target_threshold                               # only with a threshold (bce): 0 or 1
    terms, a = head.terms(logits, t)                             # N x C terms, active mask
    w        = prod_m modifier_m(Terms(p, t, |p - t|, a, y))     # detached, 1 when no modifier;
                                                                 # y = None with multi_label
    loss_i   = head.reduce(w * terms)                            # softmax: sum over C; bce, asl: mean
    loss     = mean_i(weight_i * loss_i)                         # plain mean over the batch

Reduction: the plain mean over the batch of the per-sample losses times the optional per-sample
``weight`` (curriculum); it is not divided by ``sum(weight)`` or by the sum of class weights (unlike
``F.cross_entropy(weight=...)``), so a sample of weight 0 contributes no gradient and the scale of
the weights is the scale of the loss. Modifiers see the batch before ``weight`` is applied: a sample
of weight 0 still counts in GHM's histogram and OHM's ranking.

``target_threshold`` (the bce head only, as timm's ``BinaryCrossEntropy``): after smoothing, the targets
above it become 1 and the others 0, so a mixed image counts as fully both of its classes when each keeps
more than the threshold (the ResNet strikes back recipes: 0.2).

``multi_label``: the target must be multi-hot ``N x C`` and is used as it is (never ``argmax``-ed:
``Terms.labels`` is ``None``); the head must score classes independently (``bce``, ``asl``) and label
smoothing is refused (it is defined for one class per image).
"""
from __future__ import annotations

from typing import Mapping

import torch
import torch.nn as nn

from .base import Head, Terms, to_soft_targets

__all__ = ["ModulatedLoss"]


class ModulatedLoss(nn.Module):
    """``loss(logits N x C, target N | N x C, weight N | None) -> scalar``; see the module docstring."""

    def __init__(self, head: Head, modifiers: Mapping[str, nn.Module] | None = None, label_smoothing: float = 0.0,
                 multi_label: bool = False, target_threshold: float | None = None):
        super().__init__()
        if target_threshold is not None and head.name != "bce":
            raise ValueError(f"a target threshold binarises the targets of the bce criterion, not of "
                             f"{head.name!r}; use the bce criterion or no threshold")
        if isinstance(label_smoothing, bool) or not isinstance(label_smoothing, (int, float)) \
                or not 0 <= label_smoothing <= 1:
            raise ValueError(f"label_smoothing must be in [0, 1], got {label_smoothing!r}")
        if multi_label and not head.multi_label:
            raise ValueError(f"criterion {head.name!r} treats the classes as mutually exclusive; --multi_label "
                             "needs a sigmoid criterion (bce or asl)")
        if multi_label and label_smoothing:
            raise ValueError("label smoothing as defined for one class per image (t = (1 - eps) t + eps / C) does "
                             "not fit label sets; drop --label_smoothing with --multi_label")
        self.head = head
        self.label_smoothing = label_smoothing
        self.multi_label = multi_label
        self.target_threshold = target_threshold
        self.modifiers = nn.ModuleDict(dict(modifiers or {}))

    def forward(self, logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
        if logits.dim() != 2:
            raise ValueError(f"logits must be N x C, got shape {tuple(logits.shape)}")
        n, num_classes = logits.shape
        if self.multi_label and target.shape != (n, num_classes):
            raise ValueError(f"multi-label targets must be multi-hot ({n}, {num_classes}), "
                             f"got shape {tuple(target.shape)}")
        if target.shape not in ((n,), (n, num_classes)):
            raise ValueError(f"target must be class indices ({n},) or soft targets ({n}, {num_classes}), "
                             f"got shape {tuple(target.shape)}")
        logits = logits.float()
        t = to_soft_targets(target, num_classes, self.label_smoothing)
        if self.target_threshold is not None:  # timm's BinaryCrossEntropy(target_threshold): 1 above it, else 0
            t = (t > self.target_threshold).to(t.dtype)
        terms, active = self.head.terms(logits, t)
        if len(self.modifiers):
            p = self.head.probs(logits.detach())
            labels = None if self.multi_label else target.long() if target.dim() == 1 else target.argmax(dim=1)
            context = Terms(p=p, t=t, g=(p - t).abs(), active=active, labels=labels, head=self.head)
            w = torch.ones_like(terms)
            for modifier in self.modifiers.values():
                w = w * modifier(context)
            terms = terms * w.detach()
        losses = self.head.reduce(terms)
        if weight is not None:
            if weight.shape != (n,):
                raise ValueError(f"weight must hold one value per sample ({n},), got shape {tuple(weight.shape)}")
            losses = losses * weight.to(losses)
        return losses.mean()

    def extra_repr(self) -> str:
        threshold = "" if self.target_threshold is None else f", target_threshold={self.target_threshold}"
        return f"head={self.head}, label_smoothing={self.label_smoothing}, multi_label={self.multi_label}{threshold}"
