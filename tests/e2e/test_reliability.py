"""Bad data, killed runs and non-finite losses: each met with a clear error and nothing lost."""
from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch

from helpers import (
    ROOT,
    assert_same_weights,
    main_command,
    main_process,
    read_json,
    run_main,
    tiny_train_args,
    wait_for,
)
from utils.checkpoint import KILL_AT_ENV, load_checkpoint, previous_path


def test_bad_image_stops_training_unless_skipped(tiny_data, tmp_path, caplog):
    root = shutil.copytree(tiny_data["folder"], tmp_path / "data")
    (root / "train" / "7" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    assert run_main(tiny_train_args(root, tmp_path / "out", "--tag", "strict", "--epochs", "1")) == 1
    assert "broken.png: cannot decode image" in caplog.text and "--skip_bad_images" in caplog.text
    assert run_main(tiny_train_args(root, tmp_path / "out", "--tag", "skip", "--epochs", "1", "--skip_bad_images")) == 0
    history = read_json(tmp_path / "out/resnet18/skip/metrics.json")["history"]
    assert history[0]["skipped_train"] == 1 and history[0]["skipped_val"] == 0
    assert "skipped 1 training and 0 validation images" in caplog.text


def test_non_finite_loss_stops_with_advice(tiny_data, tmp_path, caplog):
    assert run_main(tiny_train_args(tiny_data["folder"], tmp_path, "--lr", "1e30", "--epochs", "2")) == 1
    assert "the loss became" in caplog.text and "at epoch 1, batch" in caplog.text
    assert "lower --lr or add --clip_grad" in caplog.text and "--amp" not in caplog.text
    ckpts = tmp_path / "resnet18/default/checkpoints"
    assert not ckpts.exists() or all(p.suffix in (".pth", ".prev") for p in ckpts.iterdir())


def test_non_finite_loss_under_amp_names_the_precision(tiny_data, tmp_path, caplog):
    """bf16 (--amp on the CPU) failing in its first steps: the message says the precision may be the cause
    (a bf16 gradient overflowed where float32 did not, in the ResNeXt-50 smoke run on an AVX-512 CPU)."""
    assert run_main(tiny_train_args(tiny_data["folder"], tmp_path, "--lr", "1e30", "--epochs", "1", "--amp")) == 1
    assert "the loss became" in caplog.text and "at epoch 1, batch" in caplog.text
    assert "this run computes in bfloat16 (--amp), which may be the cause" in caplog.text


def test_non_finite_validation_loss_stops_and_keeps_the_last_good_epoch(tiny_data, tmp_path, caplog):
    """Epoch 2 runs at LR 100 (a x2000 milestone): its training loss stays finite (batch statistics) but
    the BN running statistics blow up, so validation gives nan. It used to exit 0, save the nan weights
    as last.pth and go on to the test; now it stops like a non-finite training loss and saves nothing of
    that epoch: last.pth and best.pth still hold epoch 1, metrics.json has one row."""
    args = tiny_train_args(tiny_data["folder"], tmp_path, "--scheduler", "multistep", "--lr_steps", "1",
                           "--lr_ratios", "2000")
    assert run_main(args) == 1
    assert "the validation loss became nan at epoch 2 (that epoch is not saved" in caplog.text
    assert "lower --lr or add --clip_grad" in caplog.text
    ckpts = tmp_path / "resnet18/default/checkpoints"
    last, best = load_checkpoint(ckpts / "last.pth"), load_checkpoint(ckpts / "best.pth")
    assert last["epoch"] == 0 and best["epoch"] == 0
    assert all(torch.isfinite(t).all() for t in last["model"].values() if t.is_floating_point())
    assert len(read_json(tmp_path / "resnet18/default/metrics.json")["history"]) == 1


def test_corrupt_last_checkpoint_falls_back_to_the_previous(tiny_data, tmp_path, caplog):
    args = tiny_train_args(tiny_data["folder"], tmp_path, "--tag", "c")  # 2 epochs
    assert run_main(args) == 0
    last = tmp_path / "resnet18/c/checkpoints/last.pth"
    truncated = last.read_bytes()[:1000]
    last.unlink()  # a new, truncated file in its place (best.pth, a hard link of the old one, stays whole)
    last.write_bytes(truncated)
    args[args.index("--epochs") + 1] = "3"
    assert run_main(args) == 0
    assert "corrupt or truncated" in caplog.text and "falling back to the previous checkpoint" in caplog.text
    assert load_checkpoint(last)["epoch"] == 2
    # epoch 2 was redone from the epoch-1 checkpoint: the history holds each epoch once
    assert [h["epoch"] for h in read_json(tmp_path / "resnet18/c/metrics.json")["history"]] == [0, 1, 2]


KILL_FLAGS = ("--epochs", "3", "--image_size", "32", "32", "-b", "4", "--train_resize", "rrc", "--hflip", "0.5",
              "--mixup", "0.3", "--scheduler", "step")


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["sigkill", "sigterm"])
def test_killed_run_resumes_to_identical_weights(tiny_data, tmp_path, sig):
    """A run killed in epoch 2 of 3 and started again with the same command ends with exactly the
    weights of a run never interrupted (SIGKILL: from the epoch-1 checkpoint; SIGTERM: from the step
    it stopped at)."""
    ref = tiny_train_args(tiny_data["folder"], tmp_path, "--tag", "ref", *KILL_FLAGS)
    assert run_main(ref) == 0
    args = tiny_train_args(tiny_data["folder"], tmp_path, "--tag", "killed", *KILL_FLAGS)
    log = tmp_path / "resnet18/killed/log.txt"
    proc = subprocess.Popen(main_command(args), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for(log, "epoch 1/3", proc)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=240)
    if sig == signal.SIGTERM:
        assert proc.returncode == 130, err
        assert "Rerun the same command to resume" in err or "rerun the same command to resume" in err
        state = load_checkpoint(tmp_path / "resnet18/killed/checkpoints/last.pth")
        assert state.get("resume_at") is None or state["resume_at"]["epoch"] == 1
    else:
        assert proc.returncode == -signal.SIGKILL
    assert run_main(args) == 0  # the same command again (in this process: no second interpreter start)
    assert_same_weights(tmp_path / "resnet18/ref/checkpoints/last.pth",
                        tmp_path / "resnet18/killed/checkpoints/last.pth")
    strip = lambda h: [{k: v for k, v in r.items() if k not in ("time", "img_per_s")} for r in h]  # noqa: E731
    assert strip(read_json(tmp_path / "resnet18/ref/metrics.json")["history"]) == \
        strip(read_json(tmp_path / "resnet18/killed/metrics.json")["history"])


# 30 training images: -b 4 gives 8 batches (8 optimizer steps) an epoch; -b 2 with 2 accumulated also 8 steps
STEP_FLAGS = ("--arch", "simple_cnn", "--train_resize", "rrc", "--hflip", "0.5", "--mixup", "0.3",
              "--scheduler", "step")


@pytest.mark.parametrize("batching", [("-b", "4"), ("-b", "2", "--accumulation_steps", "2")],
                         ids=["batch4", "accumulate2"])
def test_step_checkpoints_lose_at_most_n_steps_on_sigkill(tiny_data, tmp_path, caplog, batching):
    """--save_every_steps 2: a run SIGKILLed right after its 7th optimizer step (epoch 1 of 2; steps 2, 4 and 6
    saved) resumes from the step-6 checkpoint, one step lost, and ends with exactly the weights and history
    of a run never killed."""
    accumulate = int(batching[-1]) if "--accumulation_steps" in batching else 1
    flags = (*STEP_FLAGS, *batching, "--save_every_steps", "2")
    assert run_main(tiny_train_args(tiny_data["folder"], tmp_path, "--tag", "ref", *flags)) == 0
    args = tiny_train_args(tiny_data["folder"], tmp_path, "--tag", "killed", *flags)
    r = main_process(*args, **{KILL_AT_ENV: "step:7"})
    assert r.returncode == -signal.SIGKILL, r.stderr[-3000:]
    last = tmp_path / "simple_cnn/killed/checkpoints/last.pth"
    assert load_checkpoint(last)["resume_at"]["batch"] == 6 * accumulate  # the 6th step's state
    assert load_checkpoint(previous_path(last))["resume_at"]["batch"] == 4 * accumulate  # the 4th's before it
    assert "saved every 2 optimizer steps" in (last.parent.parent / "log.txt").read_text()
    assert run_main(args) == 0  # the same command again
    resumed = re.search(r"resumed from \S+ at epoch 1, batch (\d+)", caplog.text)
    assert resumed, caplog.text[-3000:]
    died_after, resumed_after = 7 * accumulate, int(resumed.group(1)) - 1  # batches done
    assert 0 < died_after - resumed_after <= 2 * accumulate
    ref = tmp_path / "simple_cnn/ref"
    assert_same_weights(ref / "checkpoints/last.pth", last)
    strip = lambda h: [{k: v for k, v in r.items() if k not in ("time", "img_per_s")} for r in h]  # noqa: E731
    assert strip(read_json(ref / "metrics.json")["history"]) == \
        strip(read_json(last.parent.parent / "metrics.json")["history"])


def test_a_model_with_dropout_resumes_mid_epoch_to_identical_weights(tiny_data, tmp_path):
    """Dropout draws from torch's global generator, which the step checkpoint saves and the resume restores:
    killed after step 7, resumed from step 6, the run ends with exactly the weights of one never killed (the
    data loader no longer takes a number from that generator per epoch, which put every mask one draw off)."""
    flags = ("--arch", "timm/resnet10t", "--drop_rate", "0.3", "-b", "4", "--save_every_steps", "2")
    assert run_main(tiny_train_args(tiny_data["folder"], tmp_path, "--tag", "ref", *flags)) == 0
    args = tiny_train_args(tiny_data["folder"], tmp_path, "--tag", "killed", *flags)
    assert main_process(*args, **{KILL_AT_ENV: "step:7"}).returncode == -signal.SIGKILL
    assert run_main(args) == 0
    runs = tmp_path / "timm-resnet10t"
    assert_same_weights(runs / "ref/checkpoints/last.pth", runs / "killed/checkpoints/last.pth")


def test_without_save_every_steps_last_pth_is_saved_only_at_epoch_ends(tiny_data, tmp_path):
    """No --save_every_steps: a run killed after its 12th step (epoch 2, batch 4 of 8) has saved last.pth once,
    at the end of epoch 1, and never inside an epoch."""
    args = tiny_train_args(tiny_data["folder"], tmp_path, *STEP_FLAGS, "-b", "4")
    r = main_process(*args, **{KILL_AT_ENV: "step:12"})
    assert r.returncode == -signal.SIGKILL, r.stderr[-3000:]
    last = tmp_path / "simple_cnn/default/checkpoints/last.pth"
    state = load_checkpoint(last)
    assert state["epoch"] == 0 and not state.get("resume_at")
    assert not previous_path(last).exists()


def test_checkpoint_of_another_architecture_or_class_set(tiny_run, tiny_data, tmp_path, caplog):
    ckpt = str(tiny_run / "checkpoints/last.pth")  # resnet18 on classes 0, 1, 7
    assert run_main(tiny_train_args(tiny_data["folder"], tmp_path, "--tag", "other", "--arch", "resnet34",
                                    "--resume", ckpt)) == 1
    assert "does not fit this model" in caplog.text and "missing keys: layer1.2" in caplog.text
    two = shutil.copytree(tiny_data["folder"], tmp_path / "two")
    for split in ("train", "val", "test"):
        shutil.rmtree(two / split / "7")
    assert run_main(["--evaluation", "--resume", ckpt, "--data", str(two), "-j", "0"]) == 1
    assert "has classes ['0', '1'] but" in caplog.text and "was trained on ['0', '1', '7']" in caplog.text


@pytest.fixture
def small_disk(tmp_path):
    """A real tmpfs of the given size (root only), unmounted afterwards."""
    mounted = []

    def mount(size: str, *options: str) -> Path:
        disk = tmp_path / f"disk{len(mounted)}"
        disk.mkdir()
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", ",".join([f"size={size}", *options]), "tmpfs", str(disk)],
                           capture_output=True)
        if r.returncode:
            pytest.skip("cannot mount a tmpfs here (needs root)")
        mounted.append(disk)
        return disk
    yield mount
    for disk in mounted:
        subprocess.run(["umount", str(disk)], check=True)


def test_an_unwritable_output_is_one_line(tiny_data, tmp_path, small_disk):
    """A read-only --output: a PermissionError (or EROFS) traceback before; now one line naming the path."""
    if os.geteuid() == 0:
        out = small_disk("1m", "ro")  # root may write through any mode bits: a read-only file system instead
    else:
        out = tmp_path / "ro"
        out.mkdir(mode=0o555)
    r = subprocess.run(main_command(tiny_train_args(tiny_data["folder"], out, "--epochs", "1")), cwd=tmp_path,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr[-3000:]
    assert re.search(rf"ERROR main: (PermissionError|OSError): cannot use {re.escape(str(out))}/resnet18: "
                     rf"(Permission denied|Read-only file system); check its permissions", r.stderr), r.stderr


@pytest.mark.slow
def test_a_disk_that_fills_up_during_training_is_one_line_and_keeps_the_last_checkpoint(tiny_data, tmp_path,
                                                                                      small_disk):
    """A real 120 MB file system: epoch 1's 90 MB last.pth fits, epoch 2's does not (torch.save's
    'unexpected pos ...' traceback before). Epoch 1's checkpoint stays whole and a rerun on a disk with
    room resumes from it."""
    out = small_disk("120m")
    r = subprocess.run(main_command(tiny_train_args(tiny_data["folder"], out)), cwd=tmp_path, capture_output=True,
                       text=True, timeout=600)
    last = out / "resnet18/default/checkpoints/last.pth"
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr[-3000:]
    assert f"ERROR main: CheckpointError: cannot write checkpoint {last}: No space left on device (write failed; " \
           f"the previous last.pth is kept)" in r.stderr, r.stderr[-3000:]
    assert load_checkpoint(last)["epoch"] == 0
    assert not list(last.parent.glob(".*tmp*"))


# ---- the finished mark comes last (#25 item 5) ------------------------------------------------------

def test_sigterm_during_the_final_test_exits_130_unfinished_and_the_rerun_completes_it(tmp_path):
    """SIGTERM while the final test runs (150 test images per class keep it busy): exit 130 with one line,
    not 143 and no word; the run is not marked finished (metrics.json's test result is written after every
    other output of the final step), and the same command completes it with all of them."""
    from experiments.runs import missing_outputs, read_run
    from helpers import write_digit_folders
    data = write_digit_folders(tmp_path / "data", counts={"train": 8, "val": 4, "test": 150})
    args = tiny_train_args(data, tmp_path / "out", "--epochs", "1")
    run = tmp_path / "out/resnet18/default"
    proc = subprocess.Popen(main_command(args), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    wait_for(run / "log.txt", "final test: best.pth on the test split (450 images)", proc)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=240)
    assert proc.returncode == 130, err[-3000:]
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if " ERROR " in line]
    assert len(errors) == 1 and errors[0].endswith(
        "interrupted: SIGTERM received; rerun the same command to resume from the last saved epoch"), err[-3000:]
    assert "test" not in read_json(run / "metrics.json") and read_run(run).status == "interrupted"
    assert run_main(args) == 0  # the same command again, in this process
    record = read_run(run)
    assert record.status == "finished" and record.test["test_top1"] is not None and len(record.history) == 1
    assert missing_outputs(run, record) == [] and (run / "curves.png").is_file()


def test_sigterm_during_validation_finishes_and_saves_that_epoch_then_exits_130(tmp_path):
    """SIGTERM while an epoch's validation runs (150 val images per class keep it busy): the signal only asks
    the run to stop, so the epoch is validated, saved and logged, and the run exits 130. It used to raise at
    once wherever it landed: inside a checkpoint's renames it lost last.pth, inside TensorBoard's queue the
    run hung at its writer's close. The same command resumes at the next epoch."""
    from helpers import write_digit_folders
    data = write_digit_folders(tmp_path / "data", counts={"train": 8, "val": 150, "test": 2})
    args = [a for a in tiny_train_args(data, tmp_path / "out", "--epochs", "2") if a != "--no_progress"]
    run = tmp_path / "out/resnet18/default"
    proc = subprocess.Popen(main_command(args), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    seen = ""
    while "val 0:" not in seen:  # epoch 1's validation bar (tqdm, on stderr)
        char = proc.stderr.read(1)
        assert char, f"the run ended before validating: {seen[-3000:]}"
        seen += char
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=240)
    err = seen + err
    assert proc.returncode == 130 and "Traceback" not in err, err[-3000:]
    assert "stopped after epoch 1; rerun the same command to resume." in err, err[-3000:]
    assert load_checkpoint(run / "checkpoints/last.pth")["epoch"] == 0
    metrics = read_json(run / "metrics.json")
    assert len(metrics["history"]) == 1 and "test" not in metrics
    assert run_main([*args, "--no_progress"]) == 0
    assert [row["epoch"] for row in read_json(run / "metrics.json")["history"]] == [0, 1]
    assert "resumed from" in (run / "log.txt").read_text()


def test_a_sweep_rerun_restores_the_pictures_of_a_finished_run(tiny_data, tmp_path, sweep_here):
    """A finished variant whose curves.png is gone is not skipped: the rerun resumes it at its end, and its
    final step writes the picture again (the sweep used to skip it as finished)."""
    from helpers import sweep_file, tiny_base
    sweep = sweep_file(tmp_path, {"name": "s", "base": tiny_base(tiny_data["folder"]), "variants": {"a": {}}})
    out = tmp_path / "out"
    assert sweep_here(str(sweep), "--output", str(out)).returncode == 0
    run = out / "s/simple_cnn/a"
    (run / "curves.png").unlink()
    test = read_json(run / "metrics.json")["test"]
    r = sweep_here(str(sweep), "--output", str(out))
    assert r.returncode == 0, r.stderr[-3000:]
    assert "rerun a: finished, but curves.png missing" in r.stderr and (run / "curves.png").is_file()
    assert read_json(run / "metrics.json")["test"]["test_top1"] == pytest.approx(test["test_top1"])
    assert len(read_json(run / "metrics.json")["history"]) == 1  # resumed at its end: no epoch trained again


def test_a_run_never_looks_finished_while_an_output_of_its_final_step_is_missing(tiny_data, tmp_path):
    """Watched from outside while it runs (as a sweep rerun or a kill would find it): whenever metrics.json
    has the test result (what marks a run finished), curves.png and the test report are already there. The
    test result used to be written first, and a SIGTERM in between left a 'finished' run without them."""
    from experiments.runs import missing_outputs, read_run
    run = tmp_path / "out/resnet18/default"
    proc = subprocess.Popen(main_command(tiny_train_args(tiny_data["folder"], tmp_path / "out", "--epochs", "1")),
                            cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    early = []
    while proc.poll() is None:
        if (run / "config.yaml").is_file() and (run / "metrics.json").is_file():
            record = read_run(run)
            if record.status == "finished":
                early += missing_outputs(run, record)
        time.sleep(0.002)
    assert proc.returncode == 0, proc.stderr.read()[-3000:]
    assert early == [], f"finished before {sorted(set(early))} were written"
    assert read_run(run).status == "finished" and missing_outputs(run, read_run(run)) == []
