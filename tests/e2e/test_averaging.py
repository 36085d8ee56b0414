"""--average and --swa_epochs end to end on tiny runs: last:K of the kept epochs, the averaged file in --evaluation
and --predict, the average of one checkpoint with itself, another model refused in one line; SWA's average of the
last epochs, its test, its checkpoint and its resume."""
from __future__ import annotations

import json
import os
import signal
import subprocess

import pytest
import torch

from dataloader.digits import make_mosaic
from helpers import (
    ROOT,
    TINY_SIZE,
    main_command,
    main_process,
    multi_label_checkpoint,
    read_json,
    run_main,
    tiny_train_args,
)
from models import create_model
from utils.checkpoint import KILL_AT_ENV, load_checkpoint


def summary(capsys, args: list[str]) -> dict:
    """main.main(args) in this process (it must succeed) and the summary it prints."""
    capsys.readouterr()
    assert run_main(args) == 0
    out = capsys.readouterr().out
    return json.loads(out[out.index("\n{") + 1:] if not out.startswith("{") else out)


def test_average_last_3_is_the_mean_of_the_kept_epochs_and_every_mode_reads_it(tiny_data, tmp_path, capsys):
    data = tiny_data["folder"]
    assert run_main(tiny_train_args(data, tmp_path, "--epochs", "3", "--keep_last", "3", "--seed", "2")) == 0
    folder = tmp_path / "resnet18" / "default" / "checkpoints"
    soup = tmp_path / "soup.pth"
    result = summary(capsys, ["--average", "last:3", "--output", str(tmp_path), "--arch", "resnet18", "--out",
                              str(soup), "-j", "0", "-b", "8", "--bn_batches", "2", "--no_progress"])
    assert result["averaged"] == [str(folder / f"epoch_{e}.pth") for e in (1, 2, 3)]
    assert len(result["sources"]) == 3 and 0 <= result["average"]["top1"] <= 100 and result["average"]["loss"] > 0
    averaged, epochs = load_checkpoint(soup), [load_checkpoint(folder / f"epoch_{e}.pth")["model"] for e in (1, 2, 3)]
    assert "optimizer" not in averaged and averaged["arch"] == "resnet18"
    weights = averaged["model"]
    for key, value in weights.items():
        if "running_" in key:  # batch-norm statistics: recomputed over training batches, not averaged
            continue
        if torch.is_floating_point(value):
            torch.testing.assert_close(value, sum(e[key] for e in epochs) / 3, rtol=1e-5, atol=1e-6)
        else:
            assert torch.equal(value, epochs[-1][key])
    assert not all(torch.allclose(weights[k], sum(e[k] for e in epochs) / 3) for k in weights if "running_var" in k)

    # the averaged checkpoint is a normal one: --evaluation and --predict run it (no --data: the run's data)
    assert run_main(["--evaluation", "--resume", str(soup), "--output", str(tmp_path), "-j", "0", "--no_progress"]) == 0
    assert run_main(["--predict", str(data / "test"), "--resume", str(soup), "--output", str(tmp_path), "-j", "0"]) == 0

    # averaging a checkpoint with itself (statistics kept) gives it back, and scores what it scores
    same = tmp_path / "same.pth"
    best = folder.parent / "checkpoints" / "best.pth"
    result = summary(capsys, ["--average", str(best), str(best), "--out", str(same), "--bn_batches", "0",
                              "--output", str(tmp_path), "-j", "0", "--no_progress"])
    a, b = load_checkpoint(same)["model"], load_checkpoint(best)["model"]
    assert a.keys() == b.keys() and all(torch.allclose(a[k].double(), b[k].double(), atol=1e-7) for k in a)
    assert abs(result["average"]["top1"] - result["sources"][0]["top1"]) < 1e-6


def test_another_architecture_is_refused_in_one_line(tiny_run, tmp_path):
    other = tmp_path / "other.pth"
    torch.save({"model": create_model("simple_cnn", 3).state_dict(), "arch": "simple_cnn",
                "class_names": ["0", "1", "2"]}, other)
    r = main_process("--average", str(tiny_run / "checkpoints" / "best.pth"), str(other), "--out",
                     str(tmp_path / "x.pth"), "--image_size", str(TINY_SIZE), str(TINY_SIZE))
    assert r.returncode == 1, r.stderr[-2000:]
    errors = [line for line in r.stderr.splitlines() if "Error" in line]
    assert len(errors) == 1 and "has architecture 'simple_cnn'" in errors[0] and "Traceback" not in r.stderr
    assert not (tmp_path / "x.pth").exists()


@pytest.mark.slow
def test_swa_averages_the_last_epochs_tests_them_and_a_killed_run_resumes_to_the_same_average(tiny_data, tmp_path):
    swa = ("--epochs", "3", "--swa_epochs", "2", "--keep_last", "3", "--seed", "3")
    assert run_main(tiny_train_args(tiny_data["folder"], tmp_path, "--tag", "ref", *swa)) == 0
    folder = tmp_path / "resnet18" / "ref" / "checkpoints"
    test = read_json(folder.parent / "metrics.json")["test"]
    assert 0 <= test["test_swa_top1"] <= 100 and test["test_swa_loss"] > 0 and test["swa_checkpoint"] == str(
        folder / "swa.pth")
    averaged = load_checkpoint(folder / "swa.pth")
    assert averaged["swa_epochs"] == 2 and "optimizer" not in averaged
    epochs = [load_checkpoint(folder / f"epoch_{e}.pth")["model"] for e in (2, 3)]  # the last 2 of 3 epochs
    for key, value in averaged["model"].items():
        if torch.is_floating_point(value) and "running_" not in key:  # BN statistics: recomputed at the end
            torch.testing.assert_close(value, (epochs[0][key] + epochs[1][key]) / 2, rtol=1e-5, atol=1e-6)
    assert load_checkpoint(folder / "last.pth")["model_swa"]["n_averaged"].item() == 2
    assert run_main(["--evaluation", "--resume", str(folder / "swa.pth"), "--output", str(tmp_path), "-j", "0",
                     "--no_progress"]) == 0

    # killed right after epoch 2's last.pth (one epoch averaged so far), then the same command: the same average
    args = tiny_train_args(tiny_data["folder"], tmp_path, "--tag", "killed", *swa)
    killed = subprocess.run(main_command(args), cwd=ROOT, capture_output=True, text=True, timeout=300,
                            env={**os.environ, KILL_AT_ENV: "last_replaced:2"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert run_main(args) == 0
    again = load_checkpoint(tmp_path / "resnet18" / "killed" / "checkpoints" / "swa.pth")["model"]
    for key, value in averaged["model"].items():
        torch.testing.assert_close(again[key], value, rtol=1e-5, atol=1e-6)


def test_a_multi_label_checkpoint_averages_and_reports_its_map(tmp_path, capsys):
    data = make_mosaic(tmp_path / "mosaic", {"train": 16, "val": 8, "test": 8})
    best = multi_label_checkpoint(tmp_path / "out" / "resnet18" / "ml", data, image_size=TINY_SIZE)
    out = tmp_path / "ml_avg.pth"
    result = summary(capsys, ["--average", str(best), str(best), "--out", str(out), "--bn_batches", "1",
                              "-b", "8", "-j", "0", "--no_progress"])  # no --data: the checkpoint's csv set
    assert result["average"]["map"] is not None and 0 <= result["average"]["map"] <= 100
    assert load_checkpoint(out)["model_spec"]["multi_label"] is True
