"""Calibration of a single-label classifier: temperature scaling, ECE, NLL, Brier score and selective
prediction ("unknown" below a confidence).

Temperature scaling (Guo et al., ICML 2017) divides the logits by one number ``T`` fitted on held-out data by
minimising the negative log-likelihood; it changes the confidence, never the predicted class. The expected
calibration error (ECE) bins the images by their top probability into ``bins`` equal-width bins over [0, 1]
(a probability on an edge goes to the lower bin, as torchmetrics' ``binary_search`` binning) and averages
``|accuracy - confidence|`` over the bins, weighted by the bins' share of the images.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

ECE_BINS = 15  # Guo et al.'s and torchmetrics' default


def scale_logits(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """``logits / temperature`` (float): what a calibrated model outputs."""
    logits = logits.float()
    return logits if temperature == 1.0 else logits / temperature


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor, max_iter: int = 100) -> float:
    """The temperature ``T`` that minimises the mean NLL of ``softmax(logits / T)`` on ``labels`` (class
    indices), by LBFGS on ``log T`` (so ``T`` stays positive); in float64 for a deterministic answer."""
    if logits.shape[0] == 0:
        raise ValueError("cannot fit a temperature on no images")
    logits, labels = logits.detach().double().cpu(), labels.detach().long().cpu()
    log_t = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=0.5, max_iter=max_iter, line_search_fn="strong_wolfe",
                                  tolerance_grad=1e-10, tolerance_change=1e-12)

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(logits / log_t.exp(), labels)
        loss.backward()
        return loss

    optimizer.step(closure)
    temperature = float(log_t.detach().exp())
    if not math.isfinite(temperature):
        raise FloatingPointError(f"the temperature fit diverged (T = {temperature}): are the logits finite?")
    return temperature


def reliability_bins(confidence: np.ndarray, correct: np.ndarray, bins: int = ECE_BINS) -> dict[str, list]:
    """Per confidence bin (``bins`` equal widths over [0, 1], right edges inclusive): the images' count, their
    mean confidence and their accuracy (0 for an empty bin); what ECE and the reliability diagram read."""
    confidence, correct = np.asarray(confidence, dtype=np.float64), np.asarray(correct, dtype=np.float64)
    index = np.clip(np.ceil(confidence * bins).astype(np.int64) - 1, 0, bins - 1)
    count = np.bincount(index, minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.where(count > 0, np.bincount(index, confidence, bins) / count, 0.0)
        accuracy = np.where(count > 0, np.bincount(index, correct, bins) / count, 0.0)
    return {"count": count.tolist(), "confidence": mean_conf.tolist(), "accuracy": accuracy.tolist()}


def expected_calibration_error(confidence: np.ndarray, correct: np.ndarray, bins: int = ECE_BINS) -> float:
    """ECE (a fraction, 0..1): the count-weighted mean over bins of ``|accuracy - mean confidence|``."""
    table = reliability_bins(confidence, correct, bins)
    count = np.asarray(table["count"], dtype=np.float64)
    gap = np.abs(np.asarray(table["accuracy"]) - np.asarray(table["confidence"]))
    return float((count * gap).sum() / max(1.0, count.sum()))


def calibration_report(probs: torch.Tensor, labels: torch.Tensor, bins: int = ECE_BINS) -> dict[str, Any]:
    """ECE, NLL (mean ``-log p(truth)``), Brier score (mean over images of ``sum_c (p_c - onehot_c)^2``) and the
    reliability bins of single-label ``probs`` (``N x C``, rows summing to 1) against ``labels`` (class indices)."""
    probs, labels = probs.double(), labels.long()
    confidence, predicted = probs.max(dim=1)
    correct = (predicted == labels).numpy()
    p_true = probs.gather(1, labels.view(-1, 1)).squeeze(1)
    onehot = F.one_hot(labels, probs.shape[1]).double()
    return {"ece": expected_calibration_error(confidence.numpy(), correct, bins),
            "nll": float(-p_true.clamp_min(1e-12).log().mean()) if len(labels) else float("nan"),
            "brier": float(((probs - onehot) ** 2).sum(dim=1).mean()) if len(labels) else float("nan"),
            "bins": bins, "reliability": reliability_bins(confidence.numpy(), correct, bins)}


def risk_coverage(confidence: np.ndarray, correct: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The risk-coverage curve of rejecting the least confident images first: for each ``k`` most confident
    images kept, the coverage ``k / N``, the error rate (risk) among them, and the confidence of the k-th
    (the threshold that keeps them; ties are kept or rejected together by a threshold, so a plotted curve
    steps over them)."""
    confidence, correct = np.asarray(confidence, dtype=np.float64), np.asarray(correct, dtype=np.float64)
    order = np.argsort(-confidence, kind="stable")
    kept = np.arange(1, len(order) + 1)
    risk = 1.0 - np.cumsum(correct[order]) / kept
    return kept / max(1, len(order)), risk, confidence[order]


def selective_accuracy(confidence: np.ndarray, correct: np.ndarray, threshold: float) -> dict[str, Any]:
    """``--reject_below threshold``: the share of images answered (top probability >= ``threshold``; the rest
    are ``unknown``) and the accuracy on them (None when none is answered), both in percent."""
    confidence, correct = np.asarray(confidence, dtype=np.float64), np.asarray(correct, dtype=bool)
    accepted = confidence >= threshold
    return {"reject_below": threshold, "accepted": int(accepted.sum()), "count": int(len(confidence)),
            "coverage": 100.0 * float(accepted.mean()) if len(confidence) else 0.0,
            "accuracy": 100.0 * float(correct[accepted].mean()) if accepted.any() else None}
