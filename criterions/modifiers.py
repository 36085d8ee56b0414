"""Modifiers: detached element-wise weights on a head's active loss terms, one job each.

Every modifier is an ``nn.Module`` whose ``forward(terms: Terms)`` returns weights broadcastable to
``N x C`` (no gradient flows through them), and whose ``from_options(options)`` builds it from the
keyword arguments of ``create_criterion`` or returns ``None`` when it is switched off. The loss
multiplies the weights of all enabled modifiers; the order does not matter, because every modifier
looks only at the unweighted terms (``p``, ``t``, ``g = |p - t|``, the active mask).

- ``class_weights`` (w, length C): term ``ic`` weighted by ``w_c``.
- ``cost_matrix`` (M, C x C, ``M[true, other]``; uses hard labels ``y``): delegated to the head —
  bce weights term ``ic`` by ``M[y_i, c]``; softmax weights sample ``i`` by ``sum_c M[y_i, c] p_ic``.
- ``focal`` (gamma): ``g_ic ** gamma``; for a hard target the true term gets ``(1 - p_t) ** gamma``
  (Lin et al. 2017, without the alpha balance: use class_weights for that).
- ``ghm`` (bins, momentum): GHM-C (Li et al., AAAI 2019), as mmdetection's ``GHMC``. Edges
  ``i / bins`` with the last one ``1 + 1e-6``; count the active terms per bin (bin b holds
  ``edges[b] <= g < edges[b+1]``); with momentum m > 0 a buffer ``acc`` (initialised to 0) is updated
  for the *non-empty* bins only, ``acc[b] = m acc[b] + (1 - m) count[b]``; a term in bin b weighs
  ``total_active / acc[b]`` (``/ count[b]`` when m == 0), then every weight is divided by the number of
  non-empty bins. ``acc`` is only written in training mode (``criterion.eval()`` computes the same
  weights without storing the update).
- ``ohm`` (ratio): online hard-example mining; of the active terms of the batch keep the
  ``ceil(ratio * active)`` with the largest ``g`` (weight 1), drop the others (weight 0).
- ``threshold`` (low, high): drop true-class terms (``t >= 0.5``) with ``p > high`` (already learnt)
  and other-class terms (``t < 0.5``) with ``p < low`` (already rejected).

Multi-label (``create_criterion(multi_label=True)``: targets are multi-hot sets, ``Terms.labels`` is
``None``) every modifier works per term, one (image, class) pair being one unit:

- ``class_weights`` become per-label weights of the *positive* terms, as
  ``BCEWithLogitsLoss(pos_weight=w)``: term ``ic`` weighs ``w_c t_ic + (1 - t_ic)`` (``w_c`` where the label
  is present, 1 where absent; for soft (mixed) targets this interpolates the weight of the whole term).
- ``cost_matrix`` is refused: ``M[true, other]`` needs one true class per image.
- ``focal``: ``g = |p - t| = 1 - p_t`` per term, the value of ``torchvision.ops.sigmoid_focal_loss``
  (alpha -1); the modulating factor is detached here, as every modifier weight.
- ``ghm``: GHM-C is per-term sigmoid in the paper already; the histogram counts all ``N x C`` terms.
- ``ohm`` keeps the hardest fraction of the *terms*, not of the images: an image's few labels are hard and
  its many absent classes easy, so ranking terms drops the mass of easy negatives and keeps every
  image's hard labels, where ranking images would keep all of a hard image's easy negatives too.
- ``threshold`` is per term already (``t >= 0.5`` is a present label): a present label with ``p > high``
  and an absent one with ``p < low`` are dropped; kept as is.

A new modifier is one class here plus one line in ``MODIFIERS`` (and its options in
``create_criterion``).
"""
from __future__ import annotations

import math
from typing import Any, Mapping

import torch
import torch.nn as nn

from .base import Terms, finite_number

__all__ = ["Modifier", "ClassWeights", "CostMatrix", "Focal", "GHM", "OHM", "Threshold", "MODIFIERS",
           "build_modifiers"]


def _as_tensor(name: str, value: Any, dim: int) -> torch.Tensor:
    try:
        tensor = torch.as_tensor(value, dtype=torch.float32).detach().clone()
    except (TypeError, ValueError, RuntimeError) as e:
        raise ValueError(f"{name} must be a {dim}-D tensor of numbers: {e}") from None
    if tensor.dim() != dim:
        raise ValueError(f"{name} must be a {dim}-D tensor, got shape {tuple(tensor.shape)}")
    if not torch.isfinite(tensor).all():
        raise ValueError(f"{name} must hold finite numbers")
    if (tensor < 0).any():
        raise ValueError(f"{name} must not hold negative values")
    return tensor


class Modifier(nn.Module):
    """Base class: ``forward(terms) -> weights`` broadcastable to ``N x C``."""

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> "Modifier | None":
        raise NotImplementedError

    def forward(self, terms: Terms) -> torch.Tensor:  # pragma: no cover - interface
        raise NotImplementedError


def _check_classes(name: str, size: int, num_classes: int) -> None:
    if size != num_classes:
        raise ValueError(f"{name} is for {size} classes but the logits have {num_classes} classes")


class ClassWeights(Modifier):
    """Term ``ic`` weighted by ``w_c``; multi-label: the positive terms only (``pos_weight``)."""

    def __init__(self, weights, multi_label: bool = False):
        super().__init__()
        self.register_buffer("weights", _as_tensor("class_weights", weights, 1), persistent=False)
        self.multi_label = multi_label

    @classmethod
    def from_options(cls, options):
        if options.get("class_weights") is None:
            return None
        return cls(options["class_weights"], multi_label=bool(options.get("multi_label")))

    def forward(self, terms: Terms) -> torch.Tensor:
        _check_classes("class_weights", self.weights.numel(), terms.p.shape[1])
        weights = self.weights.to(terms.p)
        if self.multi_label:  # w_c on a present label, 1 on an absent one: BCEWithLogitsLoss(pos_weight=w)
            return 1 + (weights - 1) * terms.t
        return weights

    def extra_repr(self) -> str:
        return "per-label pos_weight" if self.multi_label else "per-class"


MULTI_LABEL_COST = ("a cost matrix M[true, other] needs one true class per image; --multi_label has a set: "
                    "drop --cost_matrix (per-label --class_weights weigh the present labels)")


class CostMatrix(Modifier):
    """Cost ``M[y, c]`` of predicting ``c`` when the truth is ``y``; how it weighs is the head's call."""

    def __init__(self, matrix):
        super().__init__()
        matrix = _as_tensor("cost_matrix", matrix, 2)
        if matrix.shape[0] != matrix.shape[1]:
            raise ValueError(f"cost_matrix must be square (C x C), got shape {tuple(matrix.shape)}")
        self.register_buffer("matrix", matrix, persistent=False)

    @classmethod
    def from_options(cls, options):
        if options.get("cost_matrix") is None:
            return None
        if options.get("multi_label"):
            raise ValueError(MULTI_LABEL_COST)
        return cls(options["cost_matrix"])

    def forward(self, terms: Terms) -> torch.Tensor:
        if terms.labels is None:
            raise ValueError(MULTI_LABEL_COST)
        _check_classes("cost_matrix", self.matrix.shape[0], terms.p.shape[1])
        return terms.head.cost_weights(self.matrix.to(terms.p), terms.labels, terms.p)


class Focal(Modifier):
    """``g ** gamma``: easy terms (small gradient norm) fade out."""

    def __init__(self, gamma: float = 2.0):
        super().__init__()
        self.gamma = finite_number("focal_gamma", gamma)
        if self.gamma < 0:
            raise ValueError(f"focal_gamma must be >= 0, got {gamma}")

    @classmethod
    def from_options(cls, options):
        return cls(options.get("focal_gamma", 2.0)) if options.get("focal") else None

    def forward(self, terms: Terms) -> torch.Tensor:
        return terms.g.pow(self.gamma)

    def extra_repr(self) -> str:
        return f"gamma={self.gamma}"


class GHM(Modifier):
    """Gradient harmonizing (GHM-C): weight a term by the inverse density of its gradient norm."""

    def __init__(self, bins: int = 30, momentum: float = 0.75):
        super().__init__()
        if isinstance(bins, bool) or not isinstance(bins, int) or bins < 1:
            raise ValueError(f"ghm_bins must be an integer >= 1, got {bins!r}")
        momentum = finite_number("ghm_momentum", momentum)
        if not 0 <= momentum < 1:
            raise ValueError(f"ghm_momentum must be in [0, 1), got {momentum}")
        self.bins, self.momentum = bins, momentum
        edges = torch.arange(bins + 1).float() / bins
        edges[-1] += 1e-6
        self.register_buffer("edges", edges, persistent=False)
        self.register_buffer("acc", torch.zeros(bins))

    @classmethod
    def from_options(cls, options):
        if not options.get("ghm"):
            return None
        return cls(options.get("ghm_bins", 30), options.get("ghm_momentum", 0.75))

    def forward(self, terms: Terms) -> torch.Tensor:
        g, active = terms.g, terms.active
        # bucketize(right=True) - 1 is the b with edges[b] <= g < edges[b+1], mmdetection's test
        index = (torch.bucketize(g, self.edges.to(g), right=True) - 1).clamp_(0, self.bins - 1)
        count = torch.bincount(index[active], minlength=self.bins).to(g)
        nonempty = count > 0
        if self.momentum > 0:
            if self.acc.device != g.device:
                self.acc = self.acc.to(g.device)
            acc = torch.where(nonempty, self.momentum * self.acc + (1 - self.momentum) * count, self.acc)
            if self.training:
                self.acc.copy_(acc)
            density = acc
        else:
            density = count
        total = active.sum().clamp(min=1).to(g)
        per_bin = torch.where(nonempty, total / density.clamp(min=torch.finfo(g.dtype).tiny), torch.zeros_like(count))
        per_bin = per_bin / nonempty.sum().clamp(min=1)
        return torch.where(active, per_bin[index], torch.zeros_like(g))

    def extra_repr(self) -> str:
        return f"bins={self.bins}, momentum={self.momentum}"


class OHM(Modifier):
    """Online hard-example mining: keep the hardest ``ratio`` of the active terms (largest ``g``)."""

    def __init__(self, ratio: float = 0.7):
        super().__init__()
        self.ratio = finite_number("ohm_ratio", ratio)
        if not 0 < self.ratio <= 1:
            raise ValueError(f"ohm_ratio must be in (0, 1], got {ratio}")

    @classmethod
    def from_options(cls, options):
        return cls(options.get("ohm_ratio", 0.7)) if options.get("ohm") else None

    def forward(self, terms: Terms) -> torch.Tensor:
        g, active = terms.g, terms.active
        n = int(active.sum())
        # round() first: 0.7 * 10 is 7.000000000000001 in floating point, and ceil() would keep 8
        k = min(n, math.ceil(round(self.ratio * n, 6)))
        keep = torch.zeros(g.numel(), dtype=g.dtype, device=g.device)
        if k > 0:
            scores = torch.where(active, g, torch.full_like(g, -1.0)).flatten()
            keep[scores.topk(k).indices] = 1.0
        return keep.view_as(g)

    def extra_repr(self) -> str:
        return f"ratio={self.ratio}"


class Threshold(Modifier):
    """Drop terms already on the right side: true class ``p > high``, other classes ``p < low``."""

    def __init__(self, low: float = 0.1, high: float = 0.9):
        super().__init__()
        self.low, self.high = finite_number("threshold_low", low), finite_number("threshold_high", high)
        if not 0 <= self.low < self.high <= 1:
            raise ValueError(f"need 0 <= threshold_low < threshold_high <= 1, got low={low}, high={high}")

    @classmethod
    def from_options(cls, options):
        if not options.get("threshold"):
            return None
        return cls(options.get("threshold_low", 0.1), options.get("threshold_high", 0.9))

    def forward(self, terms: Terms) -> torch.Tensor:
        p, true = terms.p, terms.t >= 0.5
        drop = (true & (p > self.high)) | (~true & (p < self.low))
        return (~drop).to(p)

    def extra_repr(self) -> str:
        return f"low={self.low}, high={self.high}"


MODIFIERS: dict[str, type[Modifier]] = {
    "class_weights": ClassWeights,
    "cost_matrix": CostMatrix,
    "focal": Focal,
    "ghm": GHM,
    "ohm": OHM,
    "threshold": Threshold,
}


def build_modifiers(options: Mapping[str, Any]) -> dict[str, Modifier]:
    """The enabled modifiers for ``options`` (``create_criterion``'s keyword arguments), by name."""
    built = {name: cls.from_options(options) for name, cls in MODIFIERS.items()}
    return {name: m for name, m in built.items() if m is not None}
