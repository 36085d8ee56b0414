"""Losses: one small ``nn.Module`` each, built by name with ``create_criterion``.

Every loss takes ``(logits, target, weight=None)``: ``target`` is class indices or soft targets,
``weight`` optional per-sample weights; each returns the mean over the batch.
"""
from __future__ import annotations

from typing import Callable

import torch.nn as nn

from .softmax import SoftmaxCrossEntropy, to_soft_targets

CRITERIONS: dict[str, Callable[..., nn.Module]] = {
    "softmax": lambda label_smoothing=0.0, **_: SoftmaxCrossEntropy(label_smoothing=label_smoothing),
}

__all__ = ["create_criterion", "CRITERIONS", "SoftmaxCrossEntropy", "to_soft_targets"]


def create_criterion(name: str = "softmax", **kwargs) -> nn.Module:
    """Build the loss ``name`` (``softmax``) with its keyword arguments."""
    if name not in CRITERIONS:
        raise ValueError(f"unknown criterion {name!r}; choose from {', '.join(CRITERIONS)}")
    return CRITERIONS[name](**kwargs)
