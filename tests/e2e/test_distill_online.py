"""--teacher end to end: online logit and feature distillation (with mixup, EMA, AMP, the cache, channels-last)
resume bit-exactly after a SIGKILL, log the teacher's share of the step time, run under torchrun, and distil a
multi-label student per class; a teacher of other classes is one line."""
from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
import torch

from helpers import ROOT, launch, multi_label_checkpoint, read_json, run_main, tiny_train_args
from utils.checkpoint import KILL_AT_ENV, load_checkpoint


def main(args, env=None):
    return subprocess.run([sys.executable, "main.py", *args], cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})


def assert_same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.mark.parametrize("kind, extra", [
    ("logit", ("--mixup", "0.2", "--ema", "--distill_temperature", "2", "--cache_dataset", "memory")),
    ("feature", ("--distill_alpha", "0.1", "--channels_last", "--amp", "--amp_dtype", "bf16")),
])
def test_online_distillation_resumes_bit_exactly_after_a_kill(tiny_run, tiny_data, tmp_path, kind, extra):
    teacher = tiny_run / "checkpoints/best.pth"
    flags = ("--arch", "simple_cnn", "--teacher", str(teacher), "--distill_type", kind, "--save_every_steps", "2",
             *extra)
    ref = main(tiny_train_args(tiny_data["folder"], tmp_path, "--tag", "ref", *flags))
    assert ref.returncode == 0, ref.stderr[-3000:]
    args = tiny_train_args(tiny_data["folder"], tmp_path, "--tag", "killed", *flags)
    killed = main(args, env={KILL_AT_ENV: "step:7"})  # 4 steps an epoch: killed in epoch 2, saved after step 6
    assert killed.returncode == -9, killed.stderr[-3000:]
    assert load_checkpoint(tmp_path / "simple_cnn/killed/checkpoints/last.pth")["resume_at"]["batch"] == 2
    again = main(args)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "at epoch 2, batch 3" in (tmp_path / "simple_cnn/killed/log.txt").read_text()
    full, part = (load_checkpoint(tmp_path / f"simple_cnn/{tag}/checkpoints/last.pth") for tag in ("ref", "killed"))
    keys = ["model", "optimizer"] + (["model_ema"] if "--ema" in extra else []) + \
        (["distill_projection"] if kind == "feature" else [])
    for key in keys:
        if key == "optimizer":
            for k in full[key]["state"]:
                assert torch.equal(full[key]["state"][k]["momentum_buffer"], part[key]["state"][k]["momentum_buffer"])
        else:
            assert_same(full[key], part[key])
    # the projection is training state, never the student's weights
    best = load_checkpoint(tmp_path / "simple_cnn/ref/checkpoints/best.pth")
    assert not any("proj" in k for k in best["model"])
    assert (best["distill_projection"] is not None) == (kind == "feature")
    # the teacher's share of each epoch's steps, in the log and in metrics.json
    log = (tmp_path / "simple_cnn/ref/log.txt").read_text()
    assert len(re.findall(r"epoch \d/2 .* teacher \d+% of step time", log)) == 2, log[-2000:]
    rows = read_json(tmp_path / "simple_cnn/ref/metrics.json")["history"]
    assert all(0 < row["teacher_share"] < 1 for row in rows)


def test_a_teacher_at_alpha_0_leaves_the_run_unchanged(tiny_run, tiny_data, tmp_path):
    """--distill_alpha 0: the loss is the task loss and the teacher draws nothing from the run's random numbers, so
    the weights equal those of a run without it, bit for bit."""
    flags = ("--arch", "simple_cnn", "--mixup", "0.2", "--epochs", "1")
    assert run_main(tiny_train_args(tiny_data["folder"], tmp_path, "--tag", "plain", *flags)) == 0
    assert run_main(tiny_train_args(tiny_data["folder"], tmp_path, "--tag", "kd0", *flags, "--distill_alpha", "0",
                                    "--teacher", str(tiny_run / "checkpoints/best.pth"))) == 0
    assert_same(*(load_checkpoint(tmp_path / f"simple_cnn/{tag}/checkpoints/last.pth")["model"]
                  for tag in ("plain", "kd0")))


def test_online_distillation_under_torchrun(tiny_run, tiny_data, tmp_path):
    """Feature distillation on 2 processes: the teacher on each rank, the projection's gradients reduced (its
    weights stay equal on both ranks, or the saved run would not resume the same); one log, one run folder."""
    r = launch(tiny_train_args(tiny_data["folder"], tmp_path, "--tag", "ddp", "--arch", "simple_cnn", "-b", "4",
                               "--teacher", str(tiny_run / "checkpoints/best.pth"), "--distill_type", "feature",
                               "--distill_alpha", "0.1", "--epochs", "1"))
    assert r.returncode == 0, r.stderr[-3000:]
    log = (tmp_path / "simple_cnn/ddp/log.txt").read_text()
    assert "(2 processes)" in log and "online feature distillation" in log and "of step time" in log


def mosaic_args(mosaics, out):
    """One epoch of a multi-label simple_cnn on the mosaics."""
    return ["--train", "--multi_label", "--dataset", "csv", "--data", str(mosaics), "--arch", "simple_cnn",
            "--image_size", "32", "32", "-b", "4", "-j", "0", "--epochs", "1", "--warmup", "0", "--output", str(out),
            "--no_progress"]


def test_a_multi_label_student_is_distilled_per_class(mosaics, tmp_path):
    teacher = multi_label_checkpoint(tmp_path / "teacher", mosaics, image_size=32)
    args = [*mosaic_args(mosaics, tmp_path / "out"), "--teacher", str(teacher)]
    assert run_main(args) == 0
    log = (tmp_path / "out/simple_cnn/default/log.txt").read_text()
    assert "online logit distillation" in log and "teacher" in log


def test_a_teacher_of_other_classes_is_one_line(tiny_run, mosaics, tmp_path):
    r = main([*mosaic_args(mosaics, tmp_path), "--teacher", str(tiny_run / "checkpoints/best.pth")])
    assert r.returncode == 1
    errors = [line for line in r.stderr.splitlines() if "ERROR" in line]
    assert len(errors) == 1 and "was trained on classes" in errors[0] and "the student on" in errors[0], r.stderr
