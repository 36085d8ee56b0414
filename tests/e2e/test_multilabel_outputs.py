"""Multi-label end to end: a tiny --train --multi_label --tune_thresholds run on digits side by side (csv label
sets), then --evaluation and --predict of its best.pth: the report's files and keys, the tuned thresholds
applied, the same mAP as the training's final test, and predict's label sets at those thresholds."""
from __future__ import annotations

import csv

import numpy as np
import pytest

from helpers import TINY_SIZE, read_json, run_main, write_pair_set
from utils.checkpoint import load_checkpoint
from utils.multilabel import label_sets

REPORT = {"per_class.md", "per_class.png", "worst_per_class.png", "metrics.json"}


def test_multilabel_train_then_evaluation_and_predict(tiny_data, tmp_path):
    data = write_pair_set(tiny_data["folder"], tmp_path / "pairs")
    args = ["--train", "--multi_label", "--tune_thresholds", "--dataset", "csv", "--data", str(data), "--arch",
            "simple_cnn", "--image_size", str(TINY_SIZE), str(2 * TINY_SIZE), "-b", "8", "-j", "0", "--epochs", "3",
            "--lr", "0.05", "--warmup", "0", "--seed", "1", "--output", str(tmp_path / "out"), "--no_progress"]
    assert run_main(args) == 0
    run = tmp_path / "out" / "simple_cnn" / "default"
    metrics = read_json(run / "metrics.json")
    test, history = metrics["test"], metrics["history"]
    # best.pth is the epoch of the best val mAP (not of the best p@1), and the log rows carry the F1s
    best_epoch = max(history, key=lambda row: (row["val_map"], -row["val_loss"]))["epoch"]
    assert load_checkpoint(run / "checkpoints" / "best.pth")["epoch"] == best_epoch
    assert test["best_val_map"] == pytest.approx(max(row["val_map"] for row in history))
    assert all({"val_of1", "val_cf1"} <= set(row) for row in history)
    # TensorBoard: the epochs' val mAP and the run's HParams metrics, in real event files
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    assert [e.value for e in events.Scalars("val/map")] == pytest.approx([row["val_map"] for row in history])
    assert events.Scalars("hparams/test_map")[-1].value == pytest.approx(test["test_map"])
    assert "test/per_class" in events.Tags()["images"]
    assert {path.name for path in (run / "eval_test").iterdir()} == REPORT
    best = run / "checkpoints" / "best.pth"
    thresholds = load_checkpoint(best)["model_spec"]["thresholds"]
    assert len(thresholds) == 3 and thresholds != [0.5] * 3  # tuned on val

    # --evaluation: no --data (the checkpoint's csv label sets), its tuned thresholds
    (run / "eval_test" / "metrics.json").unlink()
    assert run_main(["--evaluation", "--resume", str(best), "-j", "0", "--no_progress",
                     "--out", str(tmp_path / "preds.json")]) == 0
    report = read_json(run / "eval_test" / "metrics.json")
    assert report["map"] == pytest.approx(test["test_map"]) and report["OF1"] == pytest.approx(test["test_of1"])
    assert report["thresholds"] == pytest.approx(thresholds) and report["count"] == 12
    assert set(report["per_class"]) == {"0", "1", "7"}
    assert set(report["per_class"]["7"]) == {"support", "ap", "precision", "recall", "f1"}
    rows = read_json(tmp_path / "preds.json")
    assert {"path", "labels", "predicted", "scores"} == set(rows[0])

    # --predict: the same images, the same scores and the label sets at the tuned thresholds
    assert run_main(["--predict", str(data / "images" / "test"), "--resume", str(best), "-j", "0", "--no_progress",
                     "-v"]) == 0
    folder = run / "predict" / "test"
    predictions = read_json(folder / "predictions.json")
    assert [p["path"] for p in predictions] == [r["path"] for r in rows]
    scores = np.array([[p["scores"][name] for name in "017"] for p in predictions])
    assert scores == pytest.approx(np.array([[r["scores"][name] for name in "017"] for r in rows]), abs=2e-6)
    sets = [["017"[c] for c in s] for s in label_sets(scores, thresholds)]
    assert any(sets)
    assert [[label["name"] for label in p["labels"]] for p in predictions] == sets == [r["predicted"] for r in rows]
    with open(folder / "predictions.csv", newline="") as f:
        assert [row["labels"] for row in csv.DictReader(f)] == [" ".join(s) for s in sets]
    assert len(list((folder / "images").glob("*.png"))) == 12
