"""--eval_metric, --patience and --checkpoint_hist/--keep_last: the chosen metric decides best.pth (tie rule
included), early stopping counts as documented and resumes, the kept epochs' files and index stay consistent
through a kill, evaluate's macro F1 and balanced accuracy against a hand computation, and --compare/--sweep rank
by the run's metric."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
import torch.nn as nn

import config
from engine.early_stop import EarlyStopping
from engine.epoch_end import EpochEnd
from engine.state import CheckpointSaver
from helpers import ROOT, write_run
from utils.checkpoint import KILL_AT_ENV, load_checkpoint
from utils.eval_metric import EVAL_METRICS

# A constructed history: each metric's best is another epoch. top-1: epochs 1 and 2 tie at 85, epoch 2 has the
# lower loss; top-5: epochs 2 and 3 tie at 99, epoch 3 has the lower loss; val loss: epochs 0 and 3 tie at
# 0.30 in both metric and tie-break, so the earlier stays.
EPOCHS = [dict(top1=80.0, top5=97.0, macro_f1=68.0, balanced_acc=70.0, loss=0.30),
          dict(top1=85.0, top5=95.0, macro_f1=66.0, balanced_acc=85.0, loss=0.60),
          dict(top1=85.0, top5=99.0, macro_f1=65.0, balanced_acc=72.0, loss=0.40),
          dict(top1=70.0, top5=99.0, macro_f1=62.0, balanced_acc=80.0, loss=0.30)]
BEST = {"top1": 2, "top5": 3, "macro_f1": 0, "balanced_acc": 1, "val_loss": 0}
TRAIN = {"loss": 1.0, "top1": 50.0, "lr": 0.1, "img_per_s": 100.0, "time": 1.0, "skipped": 0}


class Recorder:  # the tracker and the TensorBoard writer: nothing to record here
    def epoch(self, row):
        pass

    def add_scalar(self, tag, value, step):
        pass

    def flush(self):
        pass


def _run_epochs(folder, metric, **keep):
    saver = CheckpointSaver(folder / "checkpoints", EVAL_METRICS[metric], **keep)
    end = EpochEnd(folder, len(EPOCHS), saver, Recorder(), Recorder(),
                   lambda **kw: dict(kw, history=list(kw["history"])), [], write=True, skip_bad_images=False)
    for epoch, va in enumerate(EPOCHS):
        end(epoch, TRAIN, {**va, "skipped": 0}, None)
    return end


@pytest.mark.parametrize("metric", list(BEST))
def test_the_chosen_metric_decides_best_pth_on_a_constructed_history(tmp_path, metric):
    end = _run_epochs(tmp_path, metric)
    assert end.saver.best_epoch == BEST[metric] and load_checkpoint(end.saver.best)["epoch"] == BEST[metric]
    assert end.saver.best_top1 == EPOCHS[BEST[metric]][EVAL_METRICS[metric].result_key]
    assert all(f"val_{key}" in row for row in end.history for key in ("macro_f1", "balanced_acc"))


def test_checkpoint_hist_and_keep_last_keep_the_epochs_their_index_lists(tmp_path):
    end = _run_epochs(tmp_path, "top1", checkpoint_hist=2, keep_last=1)
    folder = tmp_path / "checkpoints"
    kept = json.loads((folder / "kept.json").read_text())
    # top-1 ranks epoch 2 (85, loss 0.40) over epoch 1 (85, loss 0.60) over epoch 0 (80); files count from 1
    assert kept["metric"] == "top1" and [e["epoch"] for e in kept["best"]] == [3, 2]
    assert [e["value"] for e in kept["best"]] == [85.0, 85.0] and [e["epoch"] for e in kept["last"]] == [4]
    assert sorted(p.name for p in folder.glob("epoch_*.pth")) == ["epoch_2.pth", "epoch_3.pth", "epoch_4.pth"]
    for entry in kept["best"] + kept["last"]:
        assert load_checkpoint(folder / entry["file"])["epoch"] == entry["epoch"] - 1
    (folder / "epoch_9.pth").write_bytes(b"left by a kill before kept.json was written")
    (folder / "epoch_3_calibrated.pth").write_bytes(b"a user's --calibrate output of a kept epoch")
    end.saver.tidy(None)
    assert not (folder / "epoch_9.pth").exists() and (folder / "epoch_4.pth").is_file()
    assert (folder / "epoch_3_calibrated.pth").is_file()  # only epoch_<E>.pth names are the saver's


KILLED_SAVE = textwrap.dedent("""
    import sys
    from pathlib import Path
    from engine.state import CheckpointSaver
    from utils.eval_metric import EVAL_METRICS
    saver = CheckpointSaver(Path(sys.argv[1]), EVAL_METRICS["val_loss"], keep_last=1)
    history = []
    for epoch in range(3):
        history.append({"epoch": epoch, "val_loss": 1.0 - epoch / 10})
        saver.save({"epoch": epoch, "history": list(history)}, history=history)
""")


def test_a_kill_while_keeping_an_epoch_leaves_an_index_of_whole_files(tmp_path):
    """SIGKILL while epoch 3's file is being linked (its temporary made): kept.json still lists epoch 2, whose
    file is whole; no half-made epoch_3.pth; the temporary goes at the next start."""
    folder = tmp_path / "checkpoints"
    env = {**os.environ, KILL_AT_ENV: "epoch_3_tmp", "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", KILLED_SAVE, str(folder)], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, env=env)
    assert done.returncode == -signal.SIGKILL, done.stderr[-2000:]
    kept = json.loads((folder / "kept.json").read_text())
    assert [e["file"] for e in kept["last"]] == ["epoch_2.pth"] and not (folder / "epoch_3.pth").exists()
    assert load_checkpoint(folder / "epoch_2.pth")["epoch"] == 1 and load_checkpoint(folder / "last.pth")["epoch"] == 2
    assert list(folder.glob(".*tmp*")) or list(folder.glob("*tmp*"))  # the temporary the kill left
    CheckpointSaver(folder, EVAL_METRICS["val_loss"], keep_last=1).tidy(None)
    assert sorted(p.name for p in folder.iterdir()) == ["epoch_2.pth", "kept.json", "last.pth", "last.pth.prev"]


def test_early_stopping_counts_improvements_beyond_min_delta_and_resumes():
    values = [50.0, 50.5, 51.2, 51.5, 51.9, 52.0, 60.0]  # +1 needed: 51.2 resets, then 3 epochs within 1 of it
    stops = EarlyStopping(EVAL_METRICS["top1"], patience=3, min_delta=1.0)
    assert [stops.step(e, v) for e, v in enumerate(values[:6])] == [False] * 5 + [True]
    assert stops.stopped_epoch == 5 and stops.best == 51.2 and stops.wait == 3
    resumed = EarlyStopping(EVAL_METRICS["top1"], patience=3, min_delta=1.0)
    first = EarlyStopping(EVAL_METRICS["top1"], patience=3, min_delta=1.0)
    for e, v in enumerate(values[:3]):
        first.step(e, v)
    resumed.restore(first.state_dict(), [])
    assert [resumed.step(e, v) for e, v in list(enumerate(values))[3:6]] == [False, False, True]
    rebuilt = EarlyStopping(EVAL_METRICS["top1"], patience=3, min_delta=1.0)  # a checkpoint without the counter
    rebuilt.restore(None, [{"epoch": e, "val_top1": v} for e, v in enumerate(values[:3])])
    assert rebuilt.state_dict() == first.state_dict()
    loss = EarlyStopping(EVAL_METRICS["val_loss"], patience=2)  # lower is better; an equal loss is no improvement
    assert [loss.step(e, v) for e, v in enumerate([1.0, 0.9, 0.95, 0.9])] == [False, False, False, True]
    never = EarlyStopping(EVAL_METRICS["top1"])  # patience 0: counts, never stops
    assert not any(never.step(e, 1.0) for e in range(10)) and never.wait == 9


def test_evaluate_gives_macro_f1_and_balanced_accuracy_as_computed_by_hand():
    from engine.loops import evaluate
    labels = [0, 0, 0, 1, 1, 2]
    preds = [0, 0, 1, 1, 2, 2]  # 4 classes: class 3 occurs in neither
    samples = [(torch.nn.functional.one_hot(torch.tensor(p), 4).float(), y, i) for i, (p, y) in
               enumerate(zip(preds, labels))]
    loader = torch.utils.data.DataLoader(samples, batch_size=4)
    result = evaluate(nn.Identity(), loader, nn.CrossEntropyLoss(), preprocess=lambda x: x)
    recall = [2 / 3, 1 / 2, 1.0]  # per class present in the truth
    f1 = [2 * 1.0 * (2 / 3) / (1 + 2 / 3), 0.5, 2 * 0.5 * 1.0 / 1.5, 0.0]  # precision 1, 1/2, 1/2; absent: 0
    assert result["balanced_acc"] == pytest.approx(100 * sum(recall) / 3)
    assert result["macro_f1"] == pytest.approx(100 * sum(f1) / 4)  # as the report's macro F1: every class
    assert result["top1"] == pytest.approx(100 * 4 / 6)


@pytest.mark.parametrize("args, message", [
    (["--eval_metric", "map"], "--eval_metric map is the mean average precision of a --multi_label model"),
    (["--min_delta", "0.5"], "--min_delta is the improvement --patience counts; add --patience N"),
    (["--keep_last", "-1"], "--keep_last must be >= 0 (0 = off), got -1"),
    (["--multi_label", "--dataset", "csv", "--eval_metric", "balanced_acc"],
     "--eval_metric balanced_acc counts one predicted class per image"),
])
def test_bad_selection_flags_are_refused(capsys, args, message):
    with pytest.raises(SystemExit):
        config.parse_config(["--train", *args])
    assert message in capsys.readouterr().err


def test_compare_ranks_by_the_runs_eval_metric_and_shows_an_early_stop(tmp_path):
    from experiments.runs import compare_runs

    def row(epoch, top1, loss):
        return {"epoch": epoch, "train_loss": 1.0, "val_top1": top1, "val_loss": loss, "img_per_s": 100.0, "time": 1.0}

    base = {"arch": "resnet18", "epochs": 5, "eval_metric": "val_loss"}
    # top-1 ranks a over b, the val loss b over a; a stopped early, after its third epoch
    write_run(tmp_path / "runs/a", {**base, "lr": 0.1}, [row(0, 90.0, 0.5), row(1, 95.0, 0.4), row(2, 96.0, 0.45)],
              {"test_top1": 93.0, "test_top5": 99.0, "early_stopped_at": 3})
    write_run(tmp_path / "runs/b", {**base, "lr": 0.2}, [row(0, 80.0, 0.3), row(1, 85.0, 0.2)],
              {"test_top1": 83.0, "test_top5": 97.0, "early_stopped_at": None})
    result = compare_runs([tmp_path / "runs"])
    assert result["sort_by"] == "best_val" and result["best"].endswith("b")
    table = (tmp_path / "runs/compare.md").read_text()
    assert "early-stopped at epoch 3" in table and "finished" in table
    import csv
    with open(result["csv"], newline="") as f:
        rows = {r["run"]: r for r in csv.DictReader(f)}
    assert list(rows) == ["b", "a"] and rows["a"]["best epoch"] == "2" and rows["a"]["best val top-1"] == "95.00"
    assert rows["b"]["eval metric"] == "val_loss" and rows["b"]["best val (eval metric)"] == "0.2000"


def test_a_search_minimises_the_val_loss(tmp_path, monkeypatch):
    import optuna

    import applications.sweep as sweep
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    rows = [{"epoch": e, "val_top1": t, "val_loss": loss}
            for e, (t, loss) in enumerate([(50.0, 0.9), (60.0, 0.5), (70.0, 0.7)])]

    def launch(children, flags, device, sweep_dir, watch=None) -> int:
        for i in range(len(rows)):
            (tmp_path / "metrics.json").write_text(json.dumps({"history": rows[:i + 1]}))
            watch(None)
        return 0

    monkeypatch.setattr(sweep, "_launch", launch)
    study = sweep.open_study("s", None, tmp_path / "study.db", None, EVAL_METRICS["val_loss"])
    assert study.direction == optuna.study.StudyDirection.MINIMIZE
    assert sweep._run_trial(study.ask(), {"eval_metric": "val_loss"}, tmp_path, None, tmp_path, None) == "complete"
    assert study.trials[0].value == 0.5


def test_unlabelled_images_are_left_out_of_the_tallies_and_they_equal_the_confusion_reports():
    from utils.metrics import class_tallies, macro_scores, report_from_confusion
    logits = torch.tensor([[2.0, 0.0], [0.0, 2.0], [2.0, 0.0]])
    assert class_tallies(logits, torch.tensor([0, -1, 1])).tolist() == [[1, 0], [1, 1], [2, 0]]
    torch.manual_seed(0)
    logits, labels = torch.randn(200, 7), torch.randint(0, 6, (200,))  # class 6 never occurs
    confusion = np.zeros((7, 7), dtype=np.int64)
    np.add.at(confusion, (labels.numpy(), logits.argmax(1).numpy()), 1)
    report, scores = report_from_confusion(confusion, list("abcdefg")), macro_scores(class_tallies(logits, labels))
    assert scores["macro_f1"] == pytest.approx(100 * report["macro"]["f1"])
    assert scores["balanced_acc"] == pytest.approx(100 * report["balanced_accuracy"])


def test_a_stopped_run_resumed_with_a_larger_patience_trains_on():
    """The saved stop holds only under a patience that still stops: resumed with a larger one, or 0, it is lifted."""
    metric = EVAL_METRICS["top1"]
    stopped = EarlyStopping(metric, patience=2)
    for epoch, value in enumerate([50.0, 49.0, 48.0]):
        stopped.step(epoch, value)
    assert stopped.stopped_epoch == 2
    for patience, expected in ((2, 2), (1, 2), (5, None), (0, None)):
        resumed = EarlyStopping(metric, patience=patience)
        resumed.restore(stopped.state_dict(), [])
        assert resumed.stopped_epoch == expected and resumed.wait == 2
