"""utils/metrics.py: the per-class report against scikit-learn, top-k counts by hand."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from utils.metrics import classification_report, topk_correct


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_classification_report_equals_scikit_learn(seed):
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 4, 60)  # class 4 never occurs (no support) ...
    preds = np.where(rng.random(60) < 0.6, labels, rng.integers(0, 5, 60))
    preds[preds == 3] = 0  # ... and class 3 is never predicted: both hit zero_division
    names = ["a", "b", "c", "d", "e"]
    report = classification_report(labels, preds, names)
    idx = list(range(5))
    p, r, f, s = precision_recall_fscore_support(labels, preds, labels=idx, zero_division=0)
    for i, name in enumerate(names):
        got = report["per_class"][name]
        assert got["precision"] == pytest.approx(p[i]) and got["recall"] == pytest.approx(r[i])
        assert got["f1"] == pytest.approx(f[i]) and got["support"] == s[i]
    mp, mr, mf, _ = precision_recall_fscore_support(labels, preds, labels=idx, average="macro", zero_division=0)
    assert [report["macro"][k] for k in ("precision", "recall", "f1")] == pytest.approx([mp, mr, mf])
    assert report["confusion_matrix"] == confusion_matrix(labels, preds, labels=idx).tolist()


def test_topk_correct_by_hand():
    logits = torch.tensor([[0.1, 0.7, 0.2], [0.5, 0.3, 0.2], [0.2, 0.3, 0.5]])
    assert topk_correct(logits, torch.tensor([2, 0, 0]), (1, 2, 5)) == [1, 2, 3]
