"""Classification metrics: top-k accuracy, per-class precision/recall/F1, confusion matrix."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch


def topk_correct(logits: torch.Tensor, target: torch.Tensor, ks: Sequence[int] = (1, 5)) -> list[int]:
    """Number of samples whose true class is among the top-k logits, for each k (k capped at C)."""
    target = target.view(-1)
    if target.numel() == 0:
        return [0 for _ in ks]
    maxk = min(max(ks), logits.shape[1])
    pred = logits.topk(maxk, dim=1).indices
    hit = pred.eq(target.view(-1, 1))
    return [int(hit[:, :min(k, maxk)].any(dim=1).sum()) for k in ks]


def probabilities(logits: torch.Tensor, head: str = "softmax") -> torch.Tensor:
    """Class probabilities under the model's own head: softmax, or per-class sigmoid for ``bce``."""
    return logits.float().sigmoid() if head == "bce" else logits.float().softmax(dim=1)


def hard_labels(target: torch.Tensor) -> torch.Tensor:
    """Class indices from indices or soft targets (argmax)."""
    return target.argmax(dim=1) if target.dim() == 2 else target


def classification_report(labels: np.ndarray, preds: np.ndarray, class_names: Sequence[str]) -> dict:
    """Per-class and macro precision, recall, F1 and support, plus the confusion matrix (rows = truth)."""
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support
    idx = list(range(len(class_names)))
    p, r, f, s = precision_recall_fscore_support(labels, preds, labels=idx, zero_division=0)
    per_class = {name: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]), "support": int(s[i])}
                 for i, name in enumerate(class_names)}
    mp, mr, mf, _ = precision_recall_fscore_support(labels, preds, labels=idx, average="macro", zero_division=0)
    return {
        "per_class": per_class,
        "macro": {"precision": float(mp), "recall": float(mr), "f1": float(mf)},
        "confusion_matrix": confusion_matrix(labels, preds, labels=idx).tolist(),
    }
