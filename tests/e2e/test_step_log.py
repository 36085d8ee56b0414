"""--log_interval N: a real short training whose log.txt has the per-step lines, with plausible numbers, at the
right steps, and whose TensorBoard folder tensorboard/steps holds the same numbers at the global steps."""
from __future__ import annotations

import math
import re

from experiments.runs import latest_step_line
from helpers import read_json, run_main, tiny_train_args

LINE = re.compile(r"epoch (\d+)/2  step (\d+)/(\d+)  loss ([\d.]+)  lr (\S+)  (\d+) img/s  data (\d+)%  "
                  r"eta (\d+):(\d\d):(\d\d)")


def test_log_interval_lines_and_tensorboard_scalars(tiny_data, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    # 30 images in batches of 4: 8 batches, 8 optimizer steps per epoch; every 3rd: steps 3 and 6 of each epoch
    assert run_main(tiny_train_args(tiny_data["folder"], tmp_path, "-b", "4", "--lr", "0.01", "--log_interval", "3",
                                    "--tag", "s")) == 0
    run = tmp_path / "resnet18" / "s"
    lines = [m.groups() for m in map(LINE.search, (run / "log.txt").read_text().splitlines()) if m]
    assert [(int(e), int(s), int(n)) for e, s, n, *_ in lines] == [(1, 3, 8), (1, 6, 8), (2, 3, 8), (2, 6, 8)]
    for _, step, steps, loss, lr, img_s, data, h, m, s in lines:
        assert 0 < float(loss) < 10 and 0 < float(lr) <= 0.01 and int(img_s) > 0 and 0 <= int(data) <= 100
        assert int(h) * 3600 + int(m) * 60 + int(s) < 600  # the rest of a tiny epoch: seconds
    events = EventAccumulator(str(run / "tensorboard" / "steps"))
    events.Reload()
    assert {"step/loss", "step/lr", "step/img_per_s", "step/data_share"} <= set(events.Tags()["scalars"])
    loss = events.Scalars("step/loss")
    assert [e.step for e in loss] == [3, 6, 11, 14]  # epoch * 8 + step
    for event, line in zip(loss, lines):
        assert math.isclose(event.value, float(line[3]), abs_tol=1e-4)  # the line shows 4 decimals
    lrs = [e.value for e in events.Scalars("step/lr")]
    assert lrs == sorted(lrs, reverse=True) and lrs[0] <= 0.01  # cosine, no warm-up: falling
    assert all(0 <= e.value <= 1 for e in events.Scalars("step/data_share"))
    # the sweep's reader finds the last of them, and the epoch rows are unchanged
    last = [line for line in (run / "log.txt").read_text().splitlines() if LINE.search(line)][-1]
    assert latest_step_line(run / "log.txt") == LINE.search(last).group(0) and " step 6/8 " in last
    assert [row["epoch"] for row in read_json(run / "metrics.json")["history"]] == [0, 1]


def test_a_resumed_run_continues_the_step_scalars(tiny_data, tmp_path):
    """One epoch, then the same run resumed for a second: tensorboard/steps holds both runs' steps (the resume
    purges only from its own first step on), at the global steps of an uninterrupted run."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    args = tiny_train_args(tiny_data["folder"], tmp_path, "-b", "4", "--lr", "0.01", "--log_interval", "3",
                           "--tag", "r", "--arch", "simple_cnn")
    assert run_main([*args, "--epochs", "1"]) == 0
    assert run_main([*args, "--epochs", "2"]) == 0
    events = EventAccumulator(str(tmp_path / "simple_cnn" / "r" / "tensorboard" / "steps"))
    events.Reload()
    assert [e.step for e in events.Scalars("step/loss")] == [3, 6, 11, 14]
