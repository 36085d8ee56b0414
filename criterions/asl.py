"""The asymmetric loss head (ASL; Ridnik et al., ICCV 2021, "Asymmetric Loss For Multi-Label Classification").

A sigmoid head like ``bce`` whose terms focus asymmetrically: with ``p = sigmoid(x)``, the shifted
negative probability ``p_m = max(p - clip, 0)`` (``1 - p_m = min(1 - p + clip, 1)``) and targets ``t``,

    term_ic = -[ t log(max(p, eps)) + (1 - t) log(max(1 - p_m, eps)) ] * (1 - p_t) ** gamma_t
    p_t     = t p + (1 - t) (1 - p_m),   gamma_t = gamma_pos t + gamma_neg (1 - t)

so easy negatives fade fast (``gamma_neg`` > ``gamma_pos``) and the very easy ones (``p < clip``) give
nothing at all. The focusing factor is differentiated (timm's default,
``disable_torch_grad_focal_loss=False``); the modifiers on top are detached as always.

Reduction: the package's, as for ``bce``: per-sample **mean** over classes, then the plain mean over the
batch. timm's ``AsymmetricLossMultiLabel`` gives the same terms; its ``reduction='mean'`` equals ours,
its default ``'batchmean'`` (sum over classes, mean over the batch) is ours times ``C``, and its
``'sum'`` (the original ASL code's, older timm's only one) is ours times ``N * C``.
"""
from __future__ import annotations

from typing import Any, Mapping

import torch

from .base import finite_number
from .bce import BCEHead

__all__ = ["ASLHead"]


class ASLHead(BCEHead):
    """Asymmetric loss terms; probabilities, reduction and cost-matrix weights are ``bce``'s."""

    name = "asl"

    def __init__(self, gamma_neg: float = 4.0, gamma_pos: float = 1.0, clip: float = 0.05, eps: float = 1e-8):
        self.gamma_neg = finite_number("asl_gamma_neg", gamma_neg)
        self.gamma_pos = finite_number("asl_gamma_pos", gamma_pos)
        self.clip = finite_number("asl_clip", clip)
        self.eps = finite_number("asl eps", eps)
        if self.gamma_neg < 0 or self.gamma_pos < 0:
            raise ValueError(f"asl_gamma_neg and asl_gamma_pos must be >= 0, got {gamma_neg} and {gamma_pos}")
        if not 0 <= self.clip < 1:
            raise ValueError(f"asl_clip must be in [0, 1), got {clip}")
        if not 0 < self.eps < 1:
            raise ValueError(f"asl eps must be in (0, 1), got {eps}")

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> "ASLHead":
        return cls(options.get("asl_gamma_neg", 4.0), options.get("asl_gamma_pos", 1.0),
                   options.get("asl_clip", 0.05))

    def terms(self, logits: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        p = logits.sigmoid()
        not_p = 1 - p
        if self.clip > 0:
            not_p = (not_p + self.clip).clamp(max=1)  # 1 - p_m: the probability shift on negatives
        log_likelihood = t * p.clamp(min=self.eps).log() + (1 - t) * not_p.clamp(min=self.eps).log()
        if self.gamma_neg > 0 or self.gamma_pos > 0:
            p_t = t * p + (1 - t) * not_p
            log_likelihood = log_likelihood * (1 - p_t).pow(self.gamma_pos * t + self.gamma_neg * (1 - t))
        terms = -log_likelihood
        return terms, torch.ones_like(terms, dtype=torch.bool)

    def __repr__(self) -> str:
        return f"asl(gamma_neg={self.gamma_neg:g}, gamma_pos={self.gamma_pos:g}, clip={self.clip:g})"
