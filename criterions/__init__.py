"""Losses: a head (``softmax``, ``bce`` or ``asl``) times combinable modifiers, built by ``create_criterion``.

Every loss takes ``(logits, target, weight=None)``: ``logits`` ``N x C``; ``target`` class indices
``N`` or soft targets ``N x C`` (mixup, distillation), or with ``multi_label`` multi-hot sets ``N x C``
(1.0 where a label is present; a row may be all zeros); ``weight`` optional per-sample weights ``N``
(curriculum). It returns ``mean_i(weight_i * loss_i)``: the plain mean over the batch, so a sample
of weight 0 contributes no gradient.

A head is a matrix of per-(sample, class) loss terms with a mask of active terms
(``softmax.py``: ``-t log p``, active where ``t > 0``, summed over classes; ``bce.py``: one-vs-all BCE,
all active, averaged over classes; ``asl.py``: the asymmetric loss, reduced as bce). Modifiers
(``modifiers.py``: class weights, cost matrix, focal, GHM, OHM, threshold) are detached element-wise
weights on the terms; enabled ones multiply; with ``multi_label`` each works per term (see there).
``loss.py`` composes them. Reading the weights from files is ``utils/loss_weights.py``'s job.

Registries: ``HEADS`` (name -> head class) and ``modifiers.MODIFIERS`` (name -> modifier class).
"""
from __future__ import annotations

from .asl import ASLHead
from .base import Head, Terms, to_soft_targets
from .bce import BCEHead
from .loss import ModulatedLoss
from .modifiers import MODIFIERS, build_modifiers
from .softmax import SoftmaxCrossEntropy, SoftmaxHead

HEADS: dict[str, type[Head]] = {
    "softmax": SoftmaxHead,
    "bce": BCEHead,
    "asl": ASLHead,
}

__all__ = ["create_criterion", "HEADS", "MODIFIERS", "Head", "Terms",
           "ModulatedLoss", "SoftmaxCrossEntropy", "SoftmaxHead", "BCEHead", "ASLHead",
           "to_soft_targets"]


def create_criterion(name: str = "softmax", *, label_smoothing: float = 0.0,
                     class_weights=None, cost_matrix=None,
                     ghm: bool = False, ghm_bins: int = 30, ghm_momentum: float = 0.75,
                     ohm: bool = False, ohm_ratio: float = 0.7,
                     threshold: bool = False, threshold_low: float = 0.1, threshold_high: float = 0.9,
                     focal: bool = False, focal_gamma: float = 2.0, multi_label: bool = False,
                     asl_gamma_neg: float = 4.0, asl_gamma_pos: float = 1.0, asl_clip: float = 0.05,
                     target_threshold: float | None = None) -> ModulatedLoss:
    """The loss with head ``name`` (``softmax``, ``bce`` or ``asl``) and the enabled modifiers.

    ``label_smoothing``: ``t = (1 - eps) t + eps / C`` for every head. ``class_weights``: None or a
    length-C tensor/list. ``cost_matrix``: None or a C x C tensor ``M[true, other]``. ``ghm``,
    ``ohm``, ``threshold``, ``focal`` switch the other modifiers on, with their parameters. The sizes
    are checked against the logits' C at the first call. See ``modifiers.py`` for the semantics.
    ``multi_label``: targets are multi-hot sets (a sigmoid head only; no cost matrix, no label
    smoothing; class weights become per-label ``pos_weight``). ``asl_*``: the ``asl`` head's focusing
    parameters and probability margin (see ``asl.py``). ``target_threshold`` (``bce`` only): smoothed, mixed
    targets above it become 1, the others 0 (timm's ``BinaryCrossEntropy(target_threshold=...)``).
    """
    if name not in HEADS:
        raise ValueError(f"unknown criterion {name!r}; choose from {', '.join(HEADS)}")
    if name == "asl" and focal:
        raise ValueError("the asl criterion focuses already; drop the focal modifier and set "
                         "asl_gamma_pos / asl_gamma_neg instead")
    options = dict(class_weights=class_weights, cost_matrix=cost_matrix,
                   ghm=ghm, ghm_bins=ghm_bins, ghm_momentum=ghm_momentum,
                   ohm=ohm, ohm_ratio=ohm_ratio,
                   threshold=threshold, threshold_low=threshold_low, threshold_high=threshold_high,
                   focal=focal, focal_gamma=focal_gamma, multi_label=multi_label,
                   asl_gamma_neg=asl_gamma_neg, asl_gamma_pos=asl_gamma_pos, asl_clip=asl_clip)
    head = HEADS[name].from_options(options)
    return ModulatedLoss(head, build_modifiers(options), label_smoothing=label_smoothing, multi_label=multi_label,
                         target_threshold=target_threshold)
