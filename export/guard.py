"""The accuracy guard of a lower-precision export: the accuracy of the fp32 and the int8 file on the same
labelled images, and how often their predictions agree. Accuracy is top-1 for a single-label model and mAP
(mean average precision over the classes, in percent) for a multi-label one, whose predictions are label sets
(the classes whose sigmoid probability is >= their decision threshold).

A logit tolerance (``export.core.verify_export``) is the right check for an fp32 export, which must
compute the same function; an int8 file computes an approximation, so what it must keep is accuracy.
"""
from __future__ import annotations

import logging
from typing import Iterable, Mapping, Sequence

import numpy as np
import torch

from utils.multilabel import average_precision, label_sets, mean_average_precision

from .core import ExportError, Runner

logger = logging.getLogger(__name__)

METRIC_NAMES = {"top1": "top-1", "map": "mAP"}  # report key suffix -> how messages name it


def compare_accuracy(runners: Mapping[str, Runner], batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
                     thresholds: Sequence[float] | None = None) -> dict[str, float]:
    """The accuracy of each runner on ``batches`` of ``(images, targets)``, and the percentage of images on which
    all runners predict the same (``agreement``); ``images`` is the count.

    Single-label (``thresholds`` None, targets class indices): ``<name>_top1`` in percent, predictions the
    argmax. Multi-label (``thresholds`` one per class, targets ``N x K`` multi-hot): ``<name>_map`` in percent,
    predictions the label sets of the sigmoid probabilities at ``thresholds``."""
    multi = thresholds is not None
    scores: dict[str, list[torch.Tensor]] = {name: [] for name in runners}
    targets = []
    for images, labels in batches:
        for name, run in runners.items():
            logits = run(images).float().cpu()
            scores[name].append(logits.sigmoid() if multi else logits.argmax(dim=1))
        targets.append(labels.cpu())
    if not targets or not sum(len(t) for t in targets):
        raise ExportError("the accuracy guard has no images to evaluate on")
    truth = torch.cat(targets)
    outputs = {name: torch.cat(parts) for name, parts in scores.items()}
    if multi:
        if not bool((truth > 0.5).any()):
            raise ExportError(f"the accuracy guard's {len(truth)} images have no labels, so their mAP is undefined: "
                              f"evaluate on a split with labelled images (--eval_split, --verify_images)")
        accuracy = {f"{name}_map": mean_average_precision(average_precision(s.numpy(), truth.numpy() > 0.5))
                    for name, s in outputs.items()}
        predictions = [[tuple(labels) for labels in label_sets(s.numpy(), np.asarray(thresholds))]
                       for s in outputs.values()]
    else:
        accuracy = {f"{name}_top1": 100.0 * int((pred == truth).sum()) / len(truth) for name, pred in outputs.items()}
        predictions = [pred.tolist() for pred in outputs.values()]
    agree = sum(len(set(per_image)) == 1 for per_image in zip(*predictions))
    return {**accuracy, "agreement": 100.0 * agree / len(truth), "images": len(truth)}


def report_metric(report: Mapping[str, float], reference: str = "fp32") -> str:
    """The accuracy a :func:`compare_accuracy` report holds: ``map`` (multi-label) or ``top1``."""
    return "map" if f"{reference}_map" in report else "top1"


def check_accuracy_drop(what: str, report: Mapping[str, float], max_drop: float, split: str,
                        reference: str = "fp32", candidate: str = "int8") -> float:
    """The accuracy drop (top-1, or mAP for a multi-label report) of ``candidate`` from ``reference`` in
    ``report`` (points); raise :class:`ExportError` naming ``what`` when it exceeds ``max_drop``."""
    metric = report_metric(report, reference)
    name = METRIC_NAMES[metric]
    before, after = report[f"{reference}_{metric}"], report[f"{candidate}_{metric}"]
    drop = before - after
    agree = "predicted label sets" if metric == "map" else "predictions"
    summary = (f"{reference} {name} {before:.2f}%, {candidate} {after:.2f}%, {agree} agree on "
               f"{report['agreement']:.2f}% of {int(report['images'])} {split} images")
    if drop > max_drop:
        raise ExportError(f"{what} loses {drop:.2f} points of {name} ({summary}), more than --max_accuracy_drop "
                          f"{max_drop:g}; calibrate on more or more typical images (--calib_images, --calib_method) "
                          f"or allow a larger drop")
    logger.info("accuracy guard passed for %s: %s (drop %.2f <= %g points)", what, summary, drop, max_drop)
    return drop
