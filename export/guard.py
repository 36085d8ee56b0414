"""The accuracy guard of a lower-precision export: top-1 of the fp32 and the int8 file on the same
labelled images, and how often their predictions agree.

A logit tolerance (``export.core.verify_export``) is the right check for an fp32 export, which must
compute the same function; an int8 file computes an approximation, so what it must keep is accuracy.
"""
from __future__ import annotations

import logging
from typing import Iterable, Mapping

import torch

from .core import ExportError, Runner

logger = logging.getLogger(__name__)


def compare_accuracy(runners: Mapping[str, Runner], batches: Iterable[tuple[torch.Tensor, torch.Tensor]]
                     ) -> dict[str, float]:
    """Top-1 (in percent) of each runner on ``batches`` of ``(images, labels)``, and the percentage of
    images on which all runners predict the same class (``agreement``); ``images`` is the count."""
    correct = {name: 0 for name in runners}
    agree = total = 0
    for images, labels in batches:
        preds = {name: run(images).argmax(dim=1).cpu() for name, run in runners.items()}
        for name, pred in preds.items():
            correct[name] += int((pred == labels).sum())
        first = next(iter(preds.values()))
        agree += int(torch.stack([p == first for p in preds.values()]).all(dim=0).sum())
        total += len(labels)
    if not total:
        raise ExportError("the accuracy guard has no images to evaluate on")
    return {**{f"{name}_top1": 100.0 * c / total for name, c in correct.items()},
            "agreement": 100.0 * agree / total, "images": total}


def check_accuracy_drop(what: str, report: Mapping[str, float], max_drop: float, split: str,
                        reference: str = "fp32", candidate: str = "int8") -> float:
    """The top-1 drop of ``candidate`` from ``reference`` in ``report`` (points); raise
    :class:`ExportError` naming ``what`` when it exceeds ``max_drop``."""
    drop = report[f"{reference}_top1"] - report[f"{candidate}_top1"]
    summary = (f"{reference} top-1 {report[f'{reference}_top1']:.2f}%, {candidate} {report[f'{candidate}_top1']:.2f}%, "
               f"predictions agree on {report['agreement']:.2f}% of {int(report['images'])} {split} images")
    if drop > max_drop:
        raise ExportError(f"{what} loses {drop:.2f} points of top-1 ({summary}), more than --max_accuracy_drop "
                          f"{max_drop:g}; calibrate on more or more typical images (--calib_images, --calib_method) "
                          f"or allow a larger drop")
    logger.info("accuracy guard passed for %s: %s (drop %.2f <= %g points)", what, summary, drop, max_drop)
    return drop
