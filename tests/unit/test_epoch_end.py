"""engine/epoch_end.py: the bookkeeping after each validated epoch, with a fake TensorBoard writer and tracker."""
from __future__ import annotations

import json
import logging

from engine.epoch_end import EpochEnd
from engine.state import CheckpointSaver
from utils.checkpoint import load_checkpoint


class FakeWriter:
    def __init__(self):
        self.scalars, self.flushes = [], 0

    def add_scalar(self, tag, value, step):
        self.scalars.append((tag, value, step))

    def flush(self):
        self.flushes += 1


class FakeRecorder:
    def __init__(self):
        self.rows = []

    def epoch(self, row):
        self.rows.append(dict(row))


def _train(loss, skipped=0):
    return {"loss": loss, "top1": 50.0, "lr": 0.1, "img_per_s": 100.0, "time": 1.0, "skipped": skipped}


def _val(top1, loss, skipped=0):
    return {"top1": top1, "top5": 100.0, "loss": loss, "skipped": skipped}


def _end(tmp_path, *, write=True, skip_bad_images=False):
    saver, writer, recorder = CheckpointSaver(tmp_path / "checkpoints"), FakeWriter(), FakeRecorder()

    def capture(**kwargs):
        return dict(kwargs, history=list(kwargs["history"]))

    return EpochEnd(tmp_path, 2, saver, writer if write else None, recorder, capture, [], write=write,
                    skip_bad_images=skip_bad_images)


def test_two_epochs_write_rows_tensorboard_tracker_checkpoints_and_log(tmp_path, caplog):
    end = _end(tmp_path)
    with caplog.at_level(logging.INFO, logger="engine.epoch_end"):
        assert end(0, _train(1.0), _val(60.0, 0.9), None)
        assert not end(1, _train(0.8), _val(55.0, 0.7), {"top1": 58.0, "top5": 100.0, "loss": 0.75})
    history = json.loads((tmp_path / "metrics.json").read_text())["history"]
    assert [row["epoch"] for row in history] == [0, 1] and history == end.history == end.recorder.rows
    assert history[1]["val_ema_top1"] == 58.0 and "val_ema_top1" not in history[0]
    assert not any(key.startswith("skipped") for row in history for key in row)
    tags = {(tag, step) for tag, _, step in end.writer.scalars}
    assert {("train/lr", 1), ("val/top1", 1), ("val/top1", 2), ("train/img_per_s", 2), ("val/ema_top1", 2)} <= tags
    assert not any(tag in ("epoch", "time") for tag, _, _ in end.writer.scalars) and end.writer.flushes == 2
    lines = [r.getMessage() for r in caplog.records if r.name == "engine.epoch_end"]
    assert lines[0].startswith("epoch 1/2") and lines[0].endswith("*best*") and "*best*" not in lines[1]
    assert "ema top-1 58.00" in lines[1]
    assert load_checkpoint(end.saver.best)["epoch"] == 0 and load_checkpoint(end.saver.last)["epoch"] == 1
    assert (end.saver.best_top1, end.saver.best_epoch) == (60.0, 0)


def test_skipped_images_are_counted_only_with_skip_bad_images(tmp_path):
    end = _end(tmp_path, skip_bad_images=True)
    end(0, _train(1.0, skipped=2), _val(60.0, 0.9, skipped=1), None)
    row = end.history[0]
    assert (row["skipped_train"], row["skipped_val"]) == (2, 1)
    assert not any(tag.startswith("skipped") for tag, _, _ in end.writer.scalars)


def test_a_rank_that_does_not_write_keeps_the_books_but_writes_nothing(tmp_path):
    end = _end(tmp_path, write=False)
    assert end(0, _train(1.0), _val(60.0, 0.9), None)
    assert end.history and end.recorder.rows and end.saver.best_epoch == 0
    assert not (tmp_path / "metrics.json").exists() and not end.saver.last.exists()


def test_a_diverging_run_is_warned_about_once(tmp_path, caplog):
    end = _end(tmp_path)
    with caplog.at_level(logging.WARNING):
        for epoch, loss in enumerate((0.5, 60.0, 70.0)):
            end(epoch, _train(1.0), _val(10.0, loss), None)
    assert caplog.text.count("diverging") == 1 and end.diverging


def test_the_first_epoch_is_best_and_links_best_pth(tmp_path):
    end = _end(tmp_path)
    end(0, _train(1.0), _val(10.0, 2.0), None)
    assert load_checkpoint(end.saver.best)["best_epoch"] == 0
