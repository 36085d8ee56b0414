"""``--make_curriculum --resume MODEL.pth``: weight each training image by how well a model knows it.

Each image gets the weight paired with the first of ``--curriculum_thresholds`` (high to low) that
the model's probability for its true class exceeds (the last weight when it exceeds none), written
as ``path,weight`` lines to ``DATA/curriculum.txt``. ``--curriculum_learning`` then multiplies each
sample's loss by its weight.

A multi-label model has no one true class: there an image's "probability of the truth" is the mean over
every class of the sigmoid probability the model gives to the true value of that label (``p`` where the
label is present, ``1 - p`` where it is absent; :func:`true_probability`), so an image is known well when the
model is sure of all its labels, present and absent. The thresholds and weights then apply unchanged.
"""
from __future__ import annotations

import argparse
import logging
from collections import Counter
from typing import Any, Sequence

import torch

from utils.metrics import probabilities
from utils.misc import log_to_file
from utils.sidefiles import write_rows

from .setup.common import checkpoint_run_dir, curriculum_path, predict_split, restore_for_inference

logger = logging.getLogger(__name__)


def curriculum_weights(p_true: torch.Tensor, thresholds: Sequence[float], weights: Sequence[float]) -> torch.Tensor:
    """Weight of the first threshold that ``p_true`` exceeds (strictly); the last weight otherwise."""
    out = torch.full_like(p_true, float(weights[-1]))
    assigned = torch.zeros_like(p_true, dtype=torch.bool)
    for t, w in zip(thresholds, weights):
        hit = (p_true > t) & ~assigned
        out[hit] = float(w)
        assigned |= hit
    return out


def true_probability(probs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per image, the probability the model gives its truth: ``probs[i, target_i]`` for class indices (N), the
    mean over labels of ``p`` (present) or ``1 - p`` (absent) for multi-hot targets (N x K, sigmoid ``probs``)."""
    if targets.dim() == 2:
        present = targets.to(probs.dtype)
        return (present * probs + (1 - present) * (1 - probs)).mean(dim=1)
    return probs.gather(1, targets.view(-1, 1)).squeeze(1)


def run(cfg: argparse.Namespace) -> dict[str, Any]:
    with log_to_file(checkpoint_run_dir(cfg.resume, cfg.output, cfg.arch) / "log.txt"):
        restored = restore_for_inference(cfg)
        out = curriculum_path(cfg)
        if out.exists() and not cfg.overwrite:
            raise FileExistsError(f"{out} already exists; pass --overwrite to replace it")
        dataset, result = predict_split(cfg, restored, "train", progress=not cfg.no_progress)
        probs = probabilities(result["logits"], "bce" if restored.spec.sigmoid else restored.spec.head,
                              restored.spec.temperature)
        p_true = true_probability(probs, result["targets"])
        weights = curriculum_weights(p_true, cfg.curriculum_thresholds, cfg.curriculum_weights)
        keys = [dataset.key(i) for i in result["indices"].tolist()]
        write_rows(out, ((k, [w]) for k, w in zip(keys, weights.tolist())), overwrite=True)
        counts = Counter(round(w, 6) for w in weights.tolist())
        logger.info("curriculum of %d training images written to %s; images per weight: %s", len(keys), out,
                    ", ".join(f"{w:g}: {n}" for w, n in sorted(counts.items(), reverse=True)))
        return {"curriculum_file": str(out), "count": len(keys),
                "per_weight": {str(w): n for w, n in sorted(counts.items(), reverse=True)}}
