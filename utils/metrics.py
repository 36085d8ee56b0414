"""Classification metrics: top-k accuracy, per-class precision/recall/F1, confusion matrix."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch


def topk_hits(logits: torch.Tensor, target: torch.Tensor, ks: Sequence[int] = (1, 5)) -> torch.Tensor:
    """Number of samples whose true class is among the top-k logits, for each k (k capped at C), as a tensor
    on the logits' device: reading it is left to the caller (a read waits for the GPU). ``target``: class
    indices ``N``, or multi-hot label sets ``N x C`` (a hit: one of the image's labels among its top k; top-1
    is then precision at 1)."""
    multi = target.dim() == 2
    target = target if multi else target.view(-1)
    if target.shape[0] == 0:
        return torch.zeros(len(ks), dtype=torch.long, device=logits.device)
    maxk = min(max(ks), logits.shape[1])
    top = logits.topk(maxk, dim=1).indices
    hit = target.gather(1, top) > 0.5 if multi else top.eq(target.view(-1, 1))
    return torch.stack([hit[:, :min(k, maxk)].any(dim=1).sum() for k in ks])


def topk_correct(logits: torch.Tensor, target: torch.Tensor, ks: Sequence[int] = (1, 5)) -> list[int]:
    """Number of samples whose true class is among the top-k logits, for each k (k capped at C)."""
    return [int(x) for x in topk_hits(logits, target, ks).tolist()]


def probabilities(logits: torch.Tensor, head: str = "softmax", temperature: float = 1.0) -> torch.Tensor:
    """Class probabilities under the model's own head: softmax, or per-class sigmoid for ``bce`` and ``asl``, of
    the logits divided by the model's ``temperature`` (``--calibrate``'s, 1.0 for an uncalibrated model)."""
    logits = logits.float() if temperature == 1.0 else logits.float() / temperature
    return logits.sigmoid() if head in ("bce", "asl") else logits.softmax(dim=1)


def hard_labels(target: torch.Tensor) -> torch.Tensor:
    """Class indices from indices or soft targets (argmax)."""
    return target.argmax(dim=1) if target.dim() == 2 else target


def classification_report(labels: np.ndarray, preds: np.ndarray, class_names: Sequence[str]) -> dict:
    """Per-class and macro precision, recall, F1 and support, plus the confusion matrix (rows = truth).

    The same numbers as scikit-learn's ``precision_recall_fscore_support(..., zero_division=0)`` and
    ``confusion_matrix`` (tested against them), in numpy: importing scikit-learn took 2 s of every
    training run's final report.
    """
    n = len(class_names)
    labels, preds = np.asarray(labels, dtype=np.int64).ravel(), np.asarray(preds, dtype=np.int64).ravel()
    return report_from_confusion(np.bincount(labels * n + preds, minlength=n * n).reshape(n, n), class_names)


def report_from_confusion(confusion: np.ndarray, class_names: Sequence[str]) -> dict:
    """:func:`classification_report` of a confusion matrix (rows = truth, columns = prediction); also the
    balanced accuracy (``balanced_accuracy``: the mean recall over the classes that occur in the truth, as
    scikit-learn's ``balanced_accuracy_score``)."""
    confusion = np.asarray(confusion, dtype=np.int64)
    support = confusion.sum(axis=1)
    p, r, f = per_class_scores(np.diag(confusion), support, confusion.sum(axis=0))
    per_class = {name: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]), "support": int(support[i])}
                 for i, name in enumerate(class_names)}
    return {
        "per_class": per_class,
        "macro": {"precision": float(p.mean()), "recall": float(r.mean()), "f1": float(f.mean())},
        "balanced_accuracy": float(r[support > 0].mean()) if (support > 0).any() else 0.0,
        "confusion_matrix": confusion.tolist(),
    }


def per_class_scores(hits: np.ndarray, support: np.ndarray,
                     predicted: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Precision, recall and F1 per class from its correct predictions (``hits``), images (``support``) and
    predictions (``predicted``); 0 where undefined, as scikit-learn's ``zero_division=0``."""
    hits, support, predicted = (np.asarray(a, dtype=float) for a in (hits, support, predicted))
    with np.errstate(divide="ignore", invalid="ignore"):
        p = np.where(predicted > 0, hits / predicted, 0.0)
        r = np.where(support > 0, hits / support, 0.0)
        f = np.where(p + r > 0, 2 * p * r / (p + r), 0.0)
    return p, r, f


def class_tallies(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per class, the correct top-1 predictions, the images and the predictions of one batch (a ``3 x C``
    tensor on the logits' device, summed over batches and read once: ``topk_hits`` says why): all that macro
    F1 and balanced accuracy need, without a ``C x C`` matrix. Images without a class (label -1: an unlabelled
    split) are not counted."""
    n = logits.shape[1]
    labels = hard_labels(target).view(-1)
    labelled = (labels >= 0) & (labels < n)
    labels, predicted = labels[labelled], logits.argmax(dim=1)[labelled]
    return torch.stack([torch.bincount(labels[labels == predicted], minlength=n), torch.bincount(labels, minlength=n),
                        torch.bincount(predicted, minlength=n)])


def macro_scores(tallies: np.ndarray) -> dict[str, float]:
    """Macro F1 and balanced accuracy (percent, as :func:`report_from_confusion`) of :func:`class_tallies`."""
    hits, support, predicted = np.asarray(tallies, dtype=np.int64)
    _, r, f = per_class_scores(hits, support, predicted)
    return {"macro_f1": 100.0 * float(f.mean()),
            "balanced_acc": 100.0 * float(r[support > 0].mean()) if (support > 0).any() else 0.0}
