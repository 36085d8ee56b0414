"""utils/multilabel.py: AP/mAP and per-class/micro precision-recall-F1 against scikit-learn on random data
with ties and with classes that have no positive; CP/CR/CF1 by MMPretrain's rule (its documented examples,
by hand); threshold tuning against a brute-force search; label sets and precision@1 by hand."""
from __future__ import annotations

import ast
import json
import warnings

import numpy as np
import pytest
import torch

from helpers import ROOT
from utils.multilabel import (
    average_precision,
    label_sets,
    mean_average_precision,
    multilabel_report,
    precision_at_1_hits,
    tune_thresholds,
)

SEEDS = [0, 1, 2]


def random_case(seed: int, n: int = 120, k: int = 6) -> tuple[np.ndarray, np.ndarray]:
    """Scores rounded to 0.05 (many ties), ~30% positives; class 4 has no positive, class 5 one positive."""
    rng = np.random.default_rng(seed)
    targets = (rng.random((n, k)) < 0.3).astype(np.float32)
    scores = np.clip(np.round((0.35 * targets + rng.random((n, k)) * 0.65) / 0.05) * 0.05, 0, 1)
    targets[:, 4] = 0
    targets[:, 5] = 0
    targets[rng.integers(n), 5] = 1
    return scores.astype(np.float32), targets


def binary_f1(scores: np.ndarray, targets: np.ndarray, threshold: float) -> float:
    from sklearn.metrics import f1_score
    return f1_score(targets, scores >= threshold, zero_division=0)


# ---- average precision -------------------------------------------------------------------------------------

@pytest.mark.parametrize("seed", SEEDS)
def test_average_precision_equals_scikit_learn_with_ties(seed):
    from sklearn.metrics import average_precision_score
    scores, targets = random_case(seed)
    ap = average_precision(scores, targets)
    assert np.isnan(ap[4]), "a class with no positive has no AP"
    for k in (0, 1, 2, 3, 5):
        assert ap[k] == pytest.approx(average_precision_score(targets[:, k], scores[:, k]), abs=1e-12)
    expected = np.mean([average_precision_score(targets[:, k], scores[:, k]) for k in (0, 1, 2, 3, 5)])
    assert mean_average_precision(ap) == pytest.approx(100 * expected)


def test_average_precision_by_hand():
    # ranks 1..4, positives at 1 and 3: AP = (1/1 + 2/3) / 2
    # tied pair at 0.5 is one threshold: (P=1/3, R=1/2), then (P=2/4, R=1): AP = 1/2 * 1/3 + 1/2 * 1/2
    scores = np.array([[0.9, 0.9], [0.8, 0.5], [0.7, 0.5], [0.6, 0.1]])
    targets = np.array([[1, 0], [0, 1], [1, 0], [0, 1]])
    assert average_precision(scores, targets) == pytest.approx([5 / 6, 5 / 12])
    assert mean_average_precision(np.array([0.5, np.nan, 1.0])) == pytest.approx(75.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "mean of empty slice" warning either
        assert np.isnan(mean_average_precision(np.array([np.nan, np.nan])))


# ---- the report ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("seed", SEEDS)
def test_report_per_class_and_micro_equal_scikit_learn(seed):
    from sklearn.metrics import precision_recall_fscore_support
    scores, targets = random_case(seed)
    thresholds = np.array([0.5, 0.3, 0.7, 0.45, 0.5, 1.01])  # class 5 never predicted: zero_division
    names = [f"c{i}" for i in range(6)]
    report = multilabel_report(scores, targets, thresholds, names)
    preds = (scores >= thresholds).astype(int)
    p, r, f, s = precision_recall_fscore_support(targets, preds, average=None, zero_division=0)
    for i, name in enumerate(names):
        got = report["per_class"][name]
        assert [got["precision"], got["recall"], got["f1"]] == pytest.approx([100 * p[i], 100 * r[i], 100 * f[i]])
        assert got["support"] == s[i]
    mp, mr, mf, _ = precision_recall_fscore_support(targets, preds, average="micro", zero_division=0)
    assert [report["OP"], report["OR"], report["OF1"]] == pytest.approx([100 * mp, 100 * mr, 100 * mf])
    # macro over all classes, CF1 the mean of the per-class F1 (MMPretrain's rule)
    macro = [100 * p.mean(), 100 * r.mean(), 100 * f.mean()]
    assert [report["CP"], report["CR"], report["CF1"]] == pytest.approx(macro)
    assert report["thresholds"] == pytest.approx(thresholds.tolist())
    assert report["per_class"]["c4"]["ap"] is None
    assert report["map"] == pytest.approx(mean_average_precision(average_precision(scores, targets)))
    json.dumps(report, allow_nan=False)  # metrics.json-ready: no NaN anywhere


def test_report_follows_mmpretrain_by_hand():
    # MMPretrain's MultiLabelMetric.calculate docstring (one-hot example): (43.75, 31.25, 33.3333)
    preds = np.array([[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 0], [0, 1, 0, 0], [0, 1, 0, 0]], dtype=float)
    truth = np.array([[1, 1, 0, 0], [0, 0, 1, 0], [1, 1, 1, 0], [1, 0, 0, 0], [1, 0, 0, 0]])
    report = multilabel_report(preds, truth, 0.5, ["a", "b", "c", "d"])
    # per class P = 1/2, 1/4, 1/1, 0; R = 1/4, 1/2, 1/2, 0; F1 = 1/3, 1/3, 2/3, 0
    assert [report["CP"], report["CR"], report["CF1"]] == pytest.approx([43.75, 31.25, 100 / 3])
    assert report["CF1"] != pytest.approx(2 * 43.75 * 31.25 / (43.75 + 31.25))  # not the F1 of CP and CR
    # pooled: TP 3, predicted 7, positives 8
    assert [report["OP"], report["OR"], report["OF1"]] == pytest.approx([300 / 7, 37.5, 40.0])
    # its index example: pred [[0], [1], [0, 1], [3]], truth [[0, 3], [0, 2], [1], [3]] -> (50, 50, 45.8333)
    preds = np.array([[1, 0, 0, 0], [0, 1, 0, 0], [1, 1, 0, 0], [0, 0, 0, 1]], dtype=float)
    truth = np.array([[1, 0, 0, 1], [1, 0, 1, 0], [0, 1, 0, 0], [0, 0, 0, 1]])
    report = multilabel_report(preds, truth, 0.5, ["a", "b", "c", "d"])
    assert [report["CP"], report["CR"], report["CF1"]] == pytest.approx([50.0, 50.0, 45.833333])


# ---- threshold tuning ---------------------------------------------------------------------------------------

def test_tuned_thresholds_fix_a_shifted_class():
    rng = np.random.default_rng(0)
    targets = np.zeros((40, 2))
    targets[:20, 0] = 1
    targets[::2, 1] = 1
    scores = np.stack([np.where(targets[:, 0] == 1, rng.uniform(0.3, 0.45, 40), rng.uniform(0.0, 0.2, 40)),
                       np.where(targets[:, 1] == 1, 0.9, 0.1)], axis=1)
    tuned = tune_thresholds(scores, targets)
    assert tuned[0] == scores[:20, 0].min()  # the lowest positive score: every positive, no negative
    assert binary_f1(scores[:, 0], targets[:, 0], 0.5) == 0
    assert multilabel_report(scores, targets, tuned, ["shifted", "fine"])["per_class"]["shifted"]["f1"] == 100
    assert multilabel_report(scores, targets, 0.5, ["shifted", "fine"])["per_class"]["shifted"]["f1"] == 0


@pytest.mark.parametrize("seed", SEEDS)
def test_tuned_thresholds_are_the_best_distinct_score_and_never_worse_than_half(seed):
    scores, targets = random_case(seed, n=60)
    tuned = tune_thresholds(scores, targets)
    assert tuned[4] == 0.5  # no positive: the default stays
    for k in (0, 1, 2, 3, 5):
        candidates = np.unique(scores[:, k])
        f1s = np.array([binary_f1(scores[:, k], targets[:, k], c) for c in candidates])
        assert tuned[k] in candidates
        assert binary_f1(scores[:, k], targets[:, k], tuned[k]) == pytest.approx(f1s.max())
        assert binary_f1(scores[:, k], targets[:, k], tuned[k]) >= binary_f1(scores[:, k], targets[:, k], 0.5)
        best = candidates[np.isclose(f1s, f1s.max(), rtol=0, atol=1e-12)]
        assert abs(tuned[k] - 0.5) == pytest.approx(np.abs(best - 0.5).min())  # ties: nearest 0.5


def test_tuned_threshold_ties_go_to_the_one_nearest_half():
    # F1 = 2/3 at 0.9 (1 of 2 positives, nothing wrong) and at the lowest score (all 4 predicted)
    scores = np.array([[0.9, 0.8], [0.6, 0.6], [0.4, 0.4], [0.2, 0.05]])
    targets = np.array([[1, 1], [0, 0], [0, 0], [1, 1]])
    assert tune_thresholds(scores, targets).tolist() == [0.2, 0.8]


# ---- label sets, precision@1, input checks --------------------------------------------------------------

def test_label_sets_are_in_descending_score_order():
    scores = np.array([[0.2, 0.9, 0.6, 0.7], [0.1, 0.1, 0.1, 0.1], [0.5, 0.3, 0.5, 0.95]])
    assert label_sets(scores, 0.5) == [[1, 3, 2], [], [3, 0, 2]]  # equal scores in class order
    assert label_sets(scores, np.array([0.1, 0.95, 0.5, 0.8])) == [[2, 0], [0], [3, 0, 2]]


def test_precision_at_1_hits_by_hand():
    logits = torch.tensor([[2.0, -1.0, 0.5], [0.0, 3.0, 1.0], [-2.0, -1.0, -3.0], [1.0, 0.0, 0.0]])
    multi_hot = torch.tensor([[1.0, 0, 1], [1, 0, 1], [0, 1, 0], [0, 0, 0]])
    hits = precision_at_1_hits(logits, multi_hot)
    assert hits.dim() == 0 and hits.device == logits.device and int(hits) == 2
    assert int(precision_at_1_hits(torch.zeros(0, 3), torch.zeros(0, 3))) == 0


@pytest.mark.parametrize("call, message", [
    (lambda: average_precision(np.zeros((3, 2)), np.zeros((3, 3))), "targets have shape"),
    (lambda: average_precision(np.zeros((3, 2)), np.full((3, 2), 0.5)), "multi-hot"),
    (lambda: tune_thresholds(np.full((2, 2), np.nan), np.zeros((2, 2))), "NaN"),
    (lambda: label_sets(np.zeros(3), 0.5), "2-D"),
    (lambda: multilabel_report(np.zeros((2, 2)), np.zeros((2, 2)), [0.5, 0.5, 0.5], ["a", "b"]), "one threshold"),
])
def test_bad_input_is_one_clear_line(call, message):
    with pytest.raises(ValueError, match=message) as info:
        call()
    assert "\n" not in str(info.value)


def test_the_module_imports_only_numpy_and_torch():
    tree = ast.parse((ROOT / "utils" / "multilabel.py").read_text())
    roots = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
             for alias in node.names}
    roots |= {node.module.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert roots <= {"__future__", "typing", "numpy", "torch"}, f"scikit-learn costs 2 s of import: {roots}"
