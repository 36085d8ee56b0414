"""Run directories: no path escapes ``<output>/<arch>/<tag>``, ``--overwrite`` clears only our own run,
one run per directory, no folder left by a failed run, and best.pth always the best epoch's, whatever
moment a run was killed at."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from helpers import (
    ROOT,
    assert_same_weights,
    file_tree,
    main_command,
    project_env,
    read_json,
    run_main,
    tiny_train_args,
    wait_for,
)
from utils.checkpoint import KILL_AT_ENV, load_checkpoint, previous_path
from utils.runlock import LOCK_NAME

# simple_cnn on the tiny digits: val top-1 33.3, 33.3, 75.0, so the last epoch is the best one and a
# stale best.pth (epoch 1's) gives another test top-1.
FAST = ("--arch", "simple_cnn", "--epochs", "3", "--lr", "0.02")


def test_overwrite_deletes_nothing_until_the_new_run_is_built(tiny_data, tmp_path, caplog):
    args = tiny_train_args(tiny_data["folder"], tmp_path, "--tag", "o", "--epochs", "1")
    assert run_main(args) == 0
    before = file_tree(tmp_path)
    bad = tmp_path / "bad.pth"
    bad.write_text("not weights")
    assert run_main(args + ["--overwrite", "--pretrained", str(bad)]) == 1
    assert file_tree(tmp_path) - {"bad.pth"} == before  # the finished run is intact
    assert run_main(args + ["--overwrite", "--lr", "0.01"]) == 0
    assert "--overwrite: starting afresh" in caplog.text
    assert read_json(tmp_path / "resnet18/o/metrics.json")["history"][0]["lr"] < 0.05


def test_a_run_that_fails_before_its_first_checkpoint_leaves_no_folder(tiny_data, tmp_path, caplog):
    out = tmp_path / "out"
    assert run_main(tiny_train_args(tiny_data["folder"], out, "--num_classes", "5")) == 1
    assert "--num_classes 5 disagrees" in caplog.text
    assert not out.exists()
    # a folder that was there before is kept, and so is one with a checkpoint
    assert run_main(tiny_train_args(tiny_data["folder"], out, "--tag", "t", "--epochs", "1")) == 0
    assert run_main(tiny_train_args(tiny_data["folder"], out, "--tag", "t2", "--epochs", "1",
                                    "--num_classes", "5")) == 1
    assert sorted(p.name for p in (out / "resnet18").iterdir()) == ["t"]


HOLD_LOCK = textwrap.dedent("""
    import time
    from utils.runlock import RunLock
    RunLock({run_dir!r}).acquire()
    print("locked", flush=True)
    time.sleep(120)
""")


def _hold_lock(run_dir: Path) -> subprocess.Popen:
    run_dir.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen([sys.executable, "-c", HOLD_LOCK.format(run_dir=str(run_dir))],
                            stdout=subprocess.PIPE, text=True, env=project_env())
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_a_second_run_in_a_locked_directory_is_refused_naming_the_holder(tiny_data, tmp_path, caplog):
    run_dir = tmp_path / "resnet18" / "busy"
    holder = _hold_lock(run_dir)
    try:
        assert run_main(tiny_train_args(tiny_data["folder"], tmp_path, "--tag", "busy", "--epochs", "1")) == 1
        assert f"is in use by another training run (pid {holder.pid} on host {socket.gethostname()}" in caplog.text
        assert sorted(p.name for p in run_dir.iterdir()) == [LOCK_NAME]  # nothing written, nothing removed
    finally:
        holder.kill()
        holder.wait()
    # SIGKILL leaves the lock file behind, but not its lock: the next run takes it over
    assert (run_dir / LOCK_NAME).is_file()
    assert run_main(tiny_train_args(tiny_data["folder"], tmp_path, "--tag", "busy", "--epochs", "1")) == 0
    assert f"took over the lock of pid {holder.pid}" in caplog.text
    assert not (run_dir / LOCK_NAME).exists()  # released on exit


@pytest.mark.slow
def test_two_trainings_started_together_in_one_directory(tiny_data, tmp_path):
    """Real processes, the second started while the first is running: the second is refused at once,
    the first is not disturbed."""
    args = tiny_train_args(tiny_data["folder"], tmp_path, "--tag", "same", *FAST)
    first = subprocess.Popen(main_command(args), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for(tmp_path / "simple_cnn/same/log.txt", "run directory", first)
    first.send_signal(signal.SIGSTOP)  # paused mid-run (lock held), however slow the second one starts
    try:
        second = subprocess.run(main_command(args), cwd=ROOT, capture_output=True, text=True)
    finally:
        first.send_signal(signal.SIGCONT)
    assert second.returncode == 1 and "Traceback" not in second.stderr
    assert f"is in use by another training run (pid {first.pid} on host" in second.stderr
    out, err = first.communicate(timeout=300)
    assert first.returncode == 0, err
    assert [h["epoch"] for h in read_json(tmp_path / "simple_cnn/same/metrics.json")["history"]] == [0, 1, 2]


def test_a_stale_best_checkpoint_is_linked_again_on_resume(tiny_data, tmp_path, caplog):
    """The reproduction: a finished run whose best.pth is an older epoch's (as after a kill
    between saving last.pth and linking best.pth); the same command again must end as the run did."""
    args = tiny_train_args(tiny_data["folder"], tmp_path, "--tag", "s", *FAST)
    assert run_main(args) == 0
    ckpts = tmp_path / "simple_cnn/s/checkpoints"
    expected = read_json(tmp_path / "simple_cnn/s/metrics.json")["test"]["test_top1"]
    assert load_checkpoint(ckpts / "best.pth")["epoch"] == 2  # the last epoch is the best
    (ckpts / "best.pth").unlink()
    os.link(previous_path(ckpts / "last.pth"), ckpts / "best.pth")  # epoch 2's state
    (ckpts / ".last.pth.tmp-99999").write_bytes(b"half a checkpoint")
    assert run_main(args) == 0
    assert read_json(tmp_path / "simple_cnn/s/metrics.json")["test"]["test_top1"] == expected
    assert "does not hold the best epoch 3" in caplog.text
    assert_same_weights(ckpts / "best.pth", ckpts / "last.pth")
    assert not list(ckpts.glob(".*tmp*"))


KILL_POINTS = ["last_tmp", "last_replaced", "best_tmp", "final_test"]


@pytest.mark.slow
def test_a_run_killed_at_any_point_of_a_save_ends_as_an_uninterrupted_one(tiny_data, tmp_path):
    """SIGKILL a real training process in its last epoch during the temporary write of last.pth, right
    after last.pth is replaced, between that and best.pth (its temporary link made), and during the final
    test; the same command again ends with the uninterrupted run's best.pth, last.pth and test top-1,
    and no temporary file or lock left."""
    ref = tiny_train_args(tiny_data["folder"], tmp_path, "--tag", "ref", *FAST)
    assert run_main(ref) == 0
    history = read_json(tmp_path / "simple_cnn/ref/metrics.json")["history"]
    tops = [h["val_top1"] for h in history]
    assert tops[-1] > max(tops[:-1])  # the last epoch is the best: a stale best.pth would show
    best_links = sum(t > max([-1.0] + tops[:i]) for i, t in enumerate(tops))  # best.pth links made in the run
    nth = {"last_tmp": len(tops), "last_replaced": len(tops), "best_tmp": best_links, "final_test": 1}
    expected = read_json(tmp_path / "simple_cnn/ref/metrics.json")["test"]
    for point in KILL_POINTS:
        args = tiny_train_args(tiny_data["folder"], tmp_path, "--tag", point, *FAST)
        killed = subprocess.run(main_command(args), cwd=ROOT, capture_output=True, text=True, timeout=300,
                                env={**os.environ, KILL_AT_ENV: f"{point}:{nth[point]}"})
        assert killed.returncode == -signal.SIGKILL, (point, killed.stderr[-2000:])
        ckpts = tmp_path / "simple_cnn" / point / "checkpoints"
        assert run_main(args) == 0, point
        assert read_json(tmp_path / "simple_cnn" / point / "metrics.json")["test"] == \
            {**expected, "run_dir": str(tmp_path / "simple_cnn" / point)}, point
        for name in ("best.pth", "last.pth"):
            assert_same_weights(tmp_path / "simple_cnn/ref/checkpoints" / name, ckpts / name)
        assert not list(ckpts.glob(".*tmp*")) and not (ckpts.parent / LOCK_NAME).exists(), point
