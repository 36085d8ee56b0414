"""The shared vocabulary of the loss family: soft targets, the head interface, the term context.

A *head* turns ``(logits, soft targets)`` into a matrix ``N x C`` of per-(sample, class) loss terms
plus a boolean mask of the *active* terms, and reduces weighted terms to one loss per sample.
A *modifier* (see ``modifiers.py``) looks at a ``Terms`` context and returns detached weights
broadcastable to ``N x C``; the loss (``loss.py``) multiplies them together and onto the terms.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

import torch
import torch.nn.functional as F


def finite_number(name: str, value: Any) -> float:
    """``value`` as a float, or a one-line ValueError naming ``name`` (bools and nan/inf refused)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return float(value)


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


@dataclass(frozen=True)
class Terms:
    """What a modifier may look at; every tensor is detached.

    ``p``: the head's probabilities ``N x C``; ``t``: the (smoothed) soft targets ``N x C``;
    ``g = |p - t|``: the gradient norm of each term w.r.t. its logit; ``active``: bool ``N x C``;
    ``labels``: hard labels ``N`` (the given indices, or ``argmax`` of soft targets), or ``None`` for
    multi-label targets (a multi-hot set per image has no one label: no modifier may rely on it there);
    ``head``: the head, for modifiers whose meaning depends on it (the cost matrix).
    """

    p: torch.Tensor
    t: torch.Tensor
    g: torch.Tensor
    active: torch.Tensor
    labels: torch.Tensor | None
    head: "Head"


class Head:
    """One way of scoring a class: how logits become probabilities and per-class loss terms."""

    name = "head"
    #: True for heads that score every class on its own (sigmoid), so a target may hold a set of labels
    multi_label = False

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> "Head":
        """The head for ``create_criterion``'s keyword arguments (heads without parameters ignore them)."""
        return cls()

    def probs(self, logits: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def terms(self, logits: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(terms N x C, active bool N x C)``; inactive terms must be exactly 0."""
        raise NotImplementedError

    def reduce(self, terms: torch.Tensor) -> torch.Tensor:
        """Weighted terms ``N x C`` -> per-sample losses ``N``."""
        raise NotImplementedError

    def cost_weights(self, cost: torch.Tensor, labels: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
        """Weights for a cost matrix ``M[true, other]``, broadcastable to ``N x C``."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return self.name
