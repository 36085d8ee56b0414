"""Multi-label metrics: per-class average precision and mAP, per-class and overall precision/recall/F1
(CP/CR/CF1, OP/OR/OF1) at per-class thresholds, max-F1 threshold tuning, predicted label sets, and the
training log's precision@1 count.

Scores are per-class probabilities (sigmoid outputs) of shape (N, K); targets are multi-hot (N, K) arrays
of 0/1. numpy and torch only: scikit-learn gives the same numbers (tests/unit/test_multilabel_metrics.py
compares against it) but costs 2 s of import in every run. Definitions: docs/multilabel.md#metrics.
"""
from __future__ import annotations

from typing import NamedTuple, Sequence

import numpy as np
import torch

DEFAULT_THRESHOLD = 0.5


def _check(scores, targets=None) -> tuple[np.ndarray, np.ndarray | None]:
    """``scores`` as a float (N, K) array and ``targets`` as a bool one of the same shape; a ValueError
    with one line saying what is wrong otherwise."""
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 2:
        raise ValueError(f"multi-label scores must be a 2-D (samples, classes) array, got shape {scores.shape}")
    if not np.isfinite(scores).all():
        raise ValueError("multi-label scores contain NaN or inf: the model's outputs diverged "
                         "(lower the learning rate or check the inputs)")
    if targets is None:
        return scores, None
    targets = np.asarray(targets)
    if targets.shape != scores.shape:
        raise ValueError(f"multi-label targets have shape {targets.shape} but the scores {scores.shape}: "
                         "one multi-hot row of K entries per sample")
    if not np.isin(targets, (0, 1)).all():
        raise ValueError("multi-label targets must be multi-hot (only 0 and 1), found other values")
    return scores, targets.astype(bool)


def _thresholds(thresholds, k: int) -> np.ndarray:
    """``thresholds`` (a float, or one per class) as a (K,) float array."""
    out = np.asarray(thresholds, dtype=np.float64)
    if out.ndim == 0:
        return np.full(k, float(out))
    if out.shape != (k,):
        raise ValueError(f"expected one threshold per class ({k}), got shape {out.shape}")
    return out


class _Ranking(NamedTuple):
    """Each class's samples sorted by descending score, class-major (K, N) so that every row is contiguous;
    one sort serves AP and threshold tuning. Column i of a row describes the threshold ``sorted_scores[i]``
    ("score >= it is positive") with all the samples tied at that score included."""
    sorted_scores: np.ndarray  # (K, N) descending per class
    sorted_targets: np.ndarray  # (K, N) bool, in the same order
    true_pos: np.ndarray  # (K, N) positives predicted at column i's threshold, ties included
    predicted: np.ndarray  # (K, N) samples predicted positive at column i's threshold, ties included
    is_end: np.ndarray  # (K, N) bool: the last column of its tied-score group (one distinct threshold each)
    positives: np.ndarray  # (K,) positives per class


def _rank(scores: np.ndarray, targets: np.ndarray) -> _Ranking:
    """Sort once per class (O(N log N)) and count true positives at every distinct score, as scikit-learn's
    precision_recall_curve does: tied scores form one threshold (so the order inside a tie is irrelevant)."""
    scores, targets = np.ascontiguousarray(scores.T), np.ascontiguousarray(targets.T)
    k, n = scores.shape
    order = np.argsort(-scores, axis=1)
    s, t = np.take_along_axis(scores, order, 1), np.take_along_axis(targets, order, 1)
    is_end = np.ones((k, n), dtype=bool)
    is_end[:, :-1] = s[:, 1:] != s[:, :-1]
    # the last column of each column's tied group: the smallest end index at or after it
    end_index = np.where(is_end, np.arange(n), n)
    group_end = np.minimum.accumulate(end_index[:, ::-1], axis=1)[:, ::-1]
    true_pos = np.take_along_axis(np.cumsum(t, axis=1), group_end, 1)
    return _Ranking(s, t, true_pos, group_end + 1, is_end, t.sum(axis=1))


def average_precision(scores: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Per-class average precision (K,), in [0, 1]: the step-wise area under the precision-recall curve,
    sum_n (R_n - R_{n-1}) P_n over the distinct scores (tied scores are one threshold), no interpolation:
    the numbers of scikit-learn's ``average_precision_score(targets[:, k], scores[:, k])``.

    A class with no positive sample gets NaN (recall is undefined there; scikit-learn warns and returns
    a meaningless number); ``mean_average_precision`` skips those classes.
    """
    scores, targets = _check(scores, targets)
    r = _rank(scores, targets)
    # each positive adds 1/P recall at its group's threshold, weighted by the precision there
    precision = r.true_pos / r.predicted  # predicted >= 1: every column predicts its own sample
    with np.errstate(divide="ignore", invalid="ignore"):
        ap = (precision * r.sorted_targets).sum(axis=1) / r.positives
    return np.where(r.positives > 0, ap, np.nan)


def mean_average_precision(ap: np.ndarray) -> float:
    """mAP in percent (0-100): the mean of the per-class APs of the classes that have a positive sample
    (NaN entries skipped); NaN when no class has one."""
    ap = np.asarray(ap, dtype=np.float64)
    return float(np.nanmean(ap) * 100) if np.isfinite(ap).any() else float("nan")


def precision_recall_f1(true_pos: np.ndarray, predicted: np.ndarray, support: np.ndarray):
    """Precision, recall and F1 (fractions) from counts, elementwise; 0 where a denominator is 0 (as
    scikit-learn's ``zero_division=0``). F1 is the harmonic mean of P and R, i.e. 2TP / (predicted + support)."""
    true_pos, predicted, support = (np.asarray(x, dtype=np.float64) for x in (true_pos, predicted, support))
    with np.errstate(divide="ignore", invalid="ignore"):
        p = np.where(predicted > 0, true_pos / predicted, 0.0)
        r = np.where(support > 0, true_pos / support, 0.0)
        f = np.where(predicted + support > 0, 2 * true_pos / (predicted + support), 0.0)
    return p, r, f


def _percent(x) -> float:
    return float(x) * 100


def multilabel_report(scores: np.ndarray, targets: np.ndarray, thresholds, class_names: Sequence[str]) -> dict:
    """mAP, per-class AP/precision/recall/F1/support, and CP/CR/CF1 and OP/OR/OF1, all in percent, with a
    class predicted when ``score >= its threshold`` (``thresholds``: a float or one per class).

    The definitions follow MMPretrain's ``MultiLabelMetric``: CP, CR (average='macro') are the means over
    all K classes of the per-class precision and recall, and CF1 is the MEAN OF THE PER-CLASS F1 (not
    2*CP*CR/(CP+CR)); OP, OR, OF1 (average='micro') pool TP, predictions and positives over all classes,
    OF1 = 2*OP*OR/(OP+OR). A class with no positive and no prediction counts 0 in the means, like there.
    ``support`` is the number of positives; ``ap`` and ``map`` are None where undefined (no positives).
    """
    scores, targets = _check(scores, targets)
    if len(class_names) != scores.shape[1]:
        raise ValueError(f"{len(class_names)} class names for {scores.shape[1]} score columns")
    thr = _thresholds(thresholds, scores.shape[1])
    preds = scores >= thr
    tp, predicted, support = (preds & targets).sum(0), preds.sum(0), targets.sum(0)
    p, r, f = precision_recall_f1(tp, predicted, support)
    op, orc, of1 = precision_recall_f1(tp.sum(), predicted.sum(), support.sum())
    ap = average_precision(scores, targets)
    mean_ap = mean_average_precision(ap)
    per_class = {name: {"support": int(support[i]), "ap": None if np.isnan(ap[i]) else _percent(ap[i]),
                        "precision": _percent(p[i]), "recall": _percent(r[i]), "f1": _percent(f[i])}
                 for i, name in enumerate(class_names)}
    return {"map": None if np.isnan(mean_ap) else mean_ap, "per_class": per_class,
            "CP": _percent(p.mean()), "CR": _percent(r.mean()), "CF1": _percent(f.mean()),
            "OP": _percent(op), "OR": _percent(orc), "OF1": _percent(of1),
            "thresholds": [float(x) for x in thr]}


def tune_thresholds(scores: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Per class, the threshold with the highest F1 on these (validation) scores: the candidates are the
    class's distinct scores (a threshold s predicts positive for scores >= s), so the best one is never
    worse than 0.5 there. A class with no positive keeps 0.5 (F1 is 0 at every threshold).

    Ties go to the candidate nearest 0.5: where the validation data cannot tell thresholds apart, staying
    closest to the untuned default moves the decision no further than the data justify (the first or last
    tied score would be an extreme that overfits a small validation set).
    """
    scores, targets = _check(scores, targets)
    n, k = scores.shape
    if n == 0:
        return np.full(k, DEFAULT_THRESHOLD)
    r = _rank(scores, targets)
    # F1 = 2TP / (predicted + positives): the same rational gives the same float, so ties compare exactly
    f1 = np.where(r.is_end, 2 * r.true_pos / (r.predicted + r.positives[:, None]), -1.0)
    best = f1.max(axis=1, keepdims=True)
    distance = np.where(f1 == best, np.abs(r.sorted_scores - DEFAULT_THRESHOLD), np.inf)
    chosen = np.take_along_axis(r.sorted_scores, distance.argmin(axis=1)[:, None], 1)[:, 0]
    return np.where(r.positives > 0, chosen, DEFAULT_THRESHOLD)


def label_sets(scores: np.ndarray, thresholds) -> list[list[int]]:
    """The predicted labels of each sample (class indices with ``score >= threshold``), highest score first
    (equal scores in class order)."""
    scores, _ = _check(scores)
    thr = _thresholds(thresholds, scores.shape[1])
    order = np.argsort(-scores, axis=1, kind="stable")
    chosen = np.take_along_axis(scores >= thr, order, 1)
    return [row[keep].tolist() for row, keep in zip(order, chosen)]


def precision_at_1_hits(logits: torch.Tensor, multi_hot: torch.Tensor) -> torch.Tensor:
    """How many samples' top-scoring class is one of their labels, as a 0-dim tensor on the logits' device
    (the multi-label training log's running accuracy; reading it is left to the caller, a read waits for
    the GPU)."""
    if logits.numel() == 0:
        return torch.zeros((), dtype=torch.long, device=logits.device)
    top = logits.argmax(dim=1, keepdim=True)
    return multi_hot.to(logits.device).gather(1, top).gt(0.5).sum()
