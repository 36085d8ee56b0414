"""A multi-label model's report (engine/report.py), --evaluation at the checkpoint's thresholds and --predict's
label sets, on a random tiny model (no training) over digits side by side (helpers.write_pair_set)."""
from __future__ import annotations

import csv
import re
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, precision_recall_fscore_support

from helpers import PAIR_CLASSES, read_json, run_main, save_pair_model, write_pair_set
from utils.multilabel import label_sets
from utils.plots import worst_scored

CLASSES = PAIR_CLASSES


@pytest.fixture(scope="module")
def pairs(tiny_data, tmp_path_factory) -> Path:
    return write_pair_set(tiny_data["folder"], tmp_path_factory.mktemp("pairs"))


def evaluation(checkpoint: Path, data: Path, out: Path) -> tuple[dict, np.ndarray, np.ndarray, list[dict]]:
    """--evaluation of ``checkpoint`` on the test split with --out: metrics.json, the scores (N x K), the
    multi-hot truth and the prediction rows."""
    assert run_main(["--evaluation", "--resume", str(checkpoint), "--data", str(data), "--dataset", "csv", "-j", "0",
                     "-b", "5",
                     "--no_progress", "--out", str(out)]) == 0
    rows = read_json(out)
    scores = np.array([[row["scores"][name] for name in CLASSES] for row in rows])
    truth = np.array([[name in row["labels"] for name in CLASSES] for row in rows])
    return read_json(checkpoint.parent.parent / "eval_test" / "metrics.json"), scores, truth, rows


def assert_matches_sklearn(metrics: dict, scores: np.ndarray, truth: np.ndarray, thresholds) -> None:
    """metrics.json's numbers equal scikit-learn's on the same scores (rounded to 6 digits in --out)."""
    preds = scores >= np.asarray(thresholds)
    p, r, f, support = precision_recall_fscore_support(truth, preds, average=None, zero_division=0)
    ap = [average_precision_score(truth[:, k], scores[:, k]) for k in range(len(CLASSES))]
    for k, name in enumerate(CLASSES):
        row = metrics["per_class"][name]
        assert row["support"] == support[k]
        assert row["ap"] == pytest.approx(100 * ap[k], abs=1e-3)
        assert (row["precision"], row["recall"], row["f1"]) == pytest.approx((100 * p[k], 100 * r[k], 100 * f[k]))
    assert metrics["map"] == pytest.approx(100 * np.mean(ap), abs=1e-3)
    assert (metrics["CP"], metrics["CR"], metrics["CF1"]) == pytest.approx((100 * p.mean(), 100 * r.mean(),
                                                                            100 * f.mean()))
    micro = precision_recall_fscore_support(truth, preds, average="micro", zero_division=0)[:3]
    assert (metrics["OP"], metrics["OR"], metrics["OF1"]) == pytest.approx(tuple(100 * x for x in micro))
    assert metrics["top1"] == pytest.approx(100 * truth[np.arange(len(truth)), scores.argmax(1)].mean())


def test_report_equals_sklearn_and_writes_the_per_class_files(pairs, tmp_path):
    checkpoint = save_pair_model(tmp_path / "run" / "checkpoints" / "best.pth", pairs)
    metrics, scores, truth, rows = evaluation(checkpoint, pairs, tmp_path / "preds.json")
    assert list(metrics) == ["split", "data", "checkpoint", "count", "map", "top1", "top5", "CP", "CR", "CF1", "OP",
                             "OR", "OF1", "thresholds", "per_class", "input"]
    assert metrics["input"]["test_size"] is False  # the evaluation's input size: the trained one
    assert metrics["count"] == len(rows) == 12 and metrics["thresholds"] == [0.5] * 3
    assert truth.sum(0).min() > 0 and 0 < truth.sum(1).min() and truth.sum(1).max() == 2  # real label sets
    assert_matches_sklearn(metrics, scores, truth, 0.5)
    assert [row["predicted"] for row in rows] == [[CLASSES[c] for c in s] for s in label_sets(scores, 0.5)]
    assert [Path(row["path"]).name for row in rows] == [f"{k:03d}.png" for k in range(12)]
    report = checkpoint.parent.parent / "eval_test"
    table = (report / "per_class.md").read_text().splitlines()
    assert table[-5].startswith("| class | support | AP | precision | recall | F1 | threshold |")  # then 3 classes
    assert table[-1].startswith(f"| 7 | {truth[:, 2].sum()} | {metrics['per_class']['7']['ap']:.2f} |")
    for name in ("per_class.png", "worst_per_class.png"):
        assert (report / name).read_bytes()[:4] == b"\x89PNG"
    assert not (report / "confusion_matrix.png").exists()


def test_evaluation_applies_the_checkpoints_thresholds_and_predict_gives_the_same_sets(pairs, tmp_path):
    untuned = save_pair_model(tmp_path / "a" / "checkpoints" / "best.pth", pairs)
    default, scores, truth, _ = evaluation(untuned, pairs, tmp_path / "a.json")
    # thresholds between two scores of each class (rounding cannot move a score across them), unlike 0.5
    ranked = np.sort(scores, axis=0)
    thresholds = [float(ranked[3 + k, k] + ranked[4 + k, k]) / 2 for k in range(len(CLASSES))]
    assert (ranked[3 + np.arange(3), np.arange(3)] < ranked[4 + np.arange(3), np.arange(3)]).all()
    tuned = save_pair_model(tmp_path / "b" / "checkpoints" / "best.pth", pairs, thresholds=thresholds)
    metrics, tuned_scores, _, rows = evaluation(tuned, pairs, tmp_path / "b.json")
    assert metrics["thresholds"] == pytest.approx(thresholds)
    assert_matches_sklearn(metrics, tuned_scores, truth, thresholds)
    assert abs(metrics["OF1"] - default["OF1"]) > 1  # the thresholds changed the decisions
    assert metrics["map"] == pytest.approx(default["map"])  # AP needs no threshold

    out = run_main(["--predict", str(pairs / "images" / "test"), "--resume", str(tuned), "-j", "0", "--no_progress",
                    "--topk", "2", "-s"])
    assert out == 0
    folder = tuned.parent.parent / "predict" / "test"
    predictions = read_json(folder / "predictions.json")
    assert [Path(p["path"]).name for p in predictions] == [Path(r["path"]).name for r in rows]
    scores = np.array([[p["scores"][name] for name in CLASSES] for p in predictions])
    assert scores == pytest.approx(tuned_scores, abs=2e-6)
    sets = [[CLASSES[c] for c in s] for s in label_sets(scores, thresholds)]
    assert [[label["name"] for label in p["labels"]] for p in predictions] == sets
    assert [[label["score"] for label in p["labels"]] for p in predictions] == [
        [p["scores"][name] for name in s] for p, s in zip(predictions, sets)]
    with open(folder / "predictions.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert list(table[0]) == ["path", "labels", "score_1", "score_2"]
    assert [row["labels"] for row in table] == [" ".join(s) for s in sets]
    top = [row["score_1"].split(":") for row in table]
    assert [name for name, _ in top] == [CLASSES[k] for k in scores.argmax(1)]
    log = (folder / "predictions.log").read_text().splitlines()
    named = [re.sub(r" \([^()]*\d\)$", "", line.split("\t")[1]) for line in log]  # the scores dropped
    assert named == [f"labels: {' '.join(s) or '(none)'}" for s in sets] and "labels: (none)" in named


def test_multi_label_is_refused_for_a_single_label_checkpoint(pairs, tmp_path, caplog):
    checkpoint = save_pair_model(tmp_path / "run" / "checkpoints" / "best.pth", pairs, multi_label=False)
    assert run_main(["--evaluation", "--resume", str(checkpoint), "--multi_label", "--data", str(pairs),
                     "--dataset", "csv", "-j", "0", "--no_progress"]) == 1
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and "is a single-label model" in errors[0] and "drop --multi_label" in errors[0]
    assert not (tmp_path / "run" / "eval_test").exists()


def test_worst_scored_picks_the_lowest_positives_and_highest_negatives():
    scores = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.3], [0.6, 0.7]])
    truth = np.array([[1, 0], [1, 1], [0, 0], [0, 1]], dtype=bool)
    assert worst_scored(scores, truth, n=1) == [([1], [2]), ([3], [2])]  # ties: the earlier sample
    assert worst_scored(scores, truth, n=5) == [([1, 0], [2, 3]), ([3, 1], [2, 0])]
