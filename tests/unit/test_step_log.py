"""engine.step_log (--log_interval): which steps it logs, the loss of just those steps, the data wait share,
the ETA, and the global steps of its TensorBoard scalars."""
from __future__ import annotations

import logging
import time

import torch

from engine.loops import RunningSums
from engine.step_log import StepLog, format_eta, step_line


class Scalars:
    """A stand-in for TensorBoard's SummaryWriter (the sink, not what is tested): the scalars it is given."""

    def __init__(self):
        self.added = []

    def add_scalar(self, tag, value, step):
        self.added.append((tag, value, step))

    def close(self):
        pass


def slow(items, wait):
    for item in items:
        time.sleep(wait)
        yield item


def test_it_logs_every_nth_step_with_the_loss_of_those_steps(caplog):
    """8 batches, 2 per optimizer step (4 steps an epoch), every 2nd step logged: steps 2 and 4, at global steps
    epoch * 4 + step; each line's loss is the mean over its own 4 batches (weighted by their sizes)."""
    writer = Scalars()
    log = StepLog(2, steps_per_epoch=4, epochs=4, accumulation_steps=2, writer=writer, world_size=2)
    sums = {"loss": 0.0, "correct": 0, "seen": 0, "expected": 0}
    running = RunningSums(sums, every=1, epoch=1, dtype=None, accumulation_steps=2)
    losses, sizes = [1.0, 2.0, 3.0, 5.0, 7.0, 11.0, 13.0, 17.0], [4, 4, 4, 2, 4, 4, 4, 2]
    seen, etas = 0, []
    with caplog.at_level(logging.INFO, logger="engine.step_log"):
        for batch in log.timed(slow(range(8), 0.02), sums):
            time.sleep(0.02)  # the step's compute: as long as the data wait
            running.add(batch, torch.tensor(losses[batch]), torch.tensor(0), sizes[batch])
            seen += sizes[batch]
            if batch % 2 == 1:
                log.step(1, batch, 0.1, running, seen)
                etas += [log.fields["eta_s"]] if batch in (3, 7) else []
    assert len(caplog.records) == 2
    assert "epoch 2/4  step 2/4  loss 2.4286  lr 1.00e-01" in caplog.records[0].getMessage()  # 34 / 14
    assert "epoch 2/4  step 4/4  loss 11.2857  lr 1.00e-01" in caplog.records[1].getMessage()  # 158 / 14
    assert 0.2 < log.fields["data_share"] < 0.8  # about half of the time waiting for data
    # images/s: the 14 images of steps 3-4, twice (two processes), over at least their 0.16 s of sleeps
    assert 0 < log.fields["img_per_s"] < 14 * 2 / 0.16
    assert 0.16 <= etas[0] < 5 and etas[1] == 0  # two steps of at least 0.08 s left, then none
    assert {tag for tag, _, _ in writer.added} == {"step/loss", "step/lr", "step/img_per_s", "step/data_share"}
    assert sorted({step for _, _, step in writer.added}) == [1 * 4 + 2, 1 * 4 + 4]


def test_a_resumed_epoch_counts_its_loss_from_where_it_starts():
    sums = {"loss": 100.0, "correct": 0, "seen": 10, "expected": 10}  # batches done before the resume
    running = RunningSums(sums, every=1, epoch=0, dtype=None, accumulation_steps=1)
    log = StepLog(1, steps_per_epoch=4, epochs=1)
    for batch in log.timed([2, 3], sums):
        running.add(batch, torch.tensor(float(batch)), torch.tensor(0), 1)
        log.step(0, batch, 0.1, running, 1)
    assert log.fields["step"] == 4 and log.fields["loss"] == 3.0 and log.fields["eta_s"] == 0


def test_the_line_format():
    assert format_eta(3725.4) == "1:02:05" and format_eta(-1) == "0:00:00"
    line = step_line({"epoch": 0, "epochs": 3, "step": 10, "steps": 56, "loss": 1.23456, "lr": 0.05,
                      "img_per_s": 312.4, "data_share": 0.123, "eta_s": 23})
    assert line == "epoch 1/3  step 10/56  loss 1.2346  lr 5.00e-02  312 img/s  data 12%  eta 0:00:23"
