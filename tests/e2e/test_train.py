"""applications/train.py and evaluation.py (--evaluation) end to end on a tiny real dataset, in-process and as a CLI."""
from __future__ import annotations

import pickle
import shutil
import subprocess
import sys

import pytest
import torch
import yaml

from helpers import ROOT, TINY_CLASSES, read_json, run_main, tiny_train_args
from utils.checkpoint import load_checkpoint, previous_path

TIMING_KEYS = ("time", "img_per_s")


def history(run_dir):
    return [{k: v for k, v in row.items() if k not in TIMING_KEYS}
            for row in read_json(run_dir / "metrics.json")["history"]]


def weights(path):
    return load_checkpoint(path)["model"]


def assert_same_weights(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.fixture(scope="module")
def trained_run(tiny_data, tmp_path_factory):
    """One run of the tiny training (2 epochs, folder layout, tag a) for the tests that read a finished
    run; a test that changes it works on a copy (``copy_run``)."""
    out = tmp_path_factory.mktemp("train")
    assert run_main(tiny_train_args(tiny_data["folder"], out, "--tag", "a")) == 0
    return out / "resnet18" / "a"


def copy_run(run, out):
    """``run`` copied to ``out/resnet18/a``: what training with ``--output out --tag a`` leaves there."""
    return shutil.copytree(run, out / "resnet18" / "a")


def test_training_writes_the_run_directory(trained_run):
    run = trained_run
    for rel in ["config.yaml", "log.txt", "metrics.json", "checkpoints/last.pth", "checkpoints/best.pth",
                "eval_test/metrics.json", "eval_test/confusion_matrix.png", "curves.png", "augmented_samples.png"]:
        assert (run / rel).is_file(), rel
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["lr"] == 0.05 and saved["image_size"] == [16, 16] and saved["tag"] == "a"
    metrics = read_json(run / "metrics.json")
    assert [h["epoch"] for h in metrics["history"]] == [0, 1]
    assert metrics["test"]["test_top1"] == read_json(run / "eval_test/metrics.json")["top1"]
    ckpt = load_checkpoint(run / "checkpoints/last.pth")
    assert ckpt["epoch"] == 1 and ckpt["class_names"] == list(TINY_CLASSES) and ckpt["config"]["arch"] == "resnet18"
    assert {"model", "optimizer", "scheduler", "rng", "best_top1"} <= ckpt.keys()
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    assert {"train/loss", "train/lr", "val/loss", "val/top1", "val/top5"} <= set(events.Tags()["scalars"])
    assert [e.step for e in events.Scalars("val/top1")] == [1, 2]
    assert [e.value for e in events.Scalars("val/top1")] == pytest.approx([h["val_top1"] for h in metrics["history"]])
    assert {"train/augmented_samples", "test/confusion_matrix", "test/cam_overlays"} <= set(events.Tags()["images"])
    if metrics["test"]["test_top1"] < 100:
        assert (run / "eval_test/errors.png").stat().st_size > 1000


def test_same_seed_repeats_a_cpu_run_exactly(tiny_data, tmp_path):
    for tag in ("a", "b"):
        assert run_main(tiny_train_args(tiny_data["folder"], tmp_path, "--tag", tag, "--train_resize", "rrc",
                                        "--hflip", "0.5")) == 0
    a, b = tmp_path / "resnet18/a", tmp_path / "resnet18/b"
    assert history(a) == history(b)
    assert_same_weights(weights(a / "checkpoints/last.pth"), weights(b / "checkpoints/last.pth"))


def test_resume_continues_epoch_counter_and_optimizer(trained_run, tiny_data, tmp_path, caplog):
    args = tiny_train_args(tiny_data["folder"], tmp_path, "--tag", "a")
    copy_run(trained_run, tmp_path)  # what `run_main(args)` leaves
    last = tmp_path / "resnet18/a/checkpoints/last.pth"
    before = load_checkpoint(last)
    assert before["epoch"] == 1 and before["optimizer"]["state"]  # momentum buffers exist
    args3 = [a if a != "2" or args[i - 1] != "--epochs" else "3" for i, a in enumerate(args)]
    assert run_main(args3) == 0
    after = load_checkpoint(last)
    assert "resumed from" in caplog.text and "at epoch 3 (" in caplog.text
    assert after["epoch"] == 2 and [h["epoch"] for h in after["history"]] == [0, 1, 2]
    steps_per_epoch = before["scheduler"]["last_epoch"] // 2
    assert after["scheduler"]["last_epoch"] == 3 * steps_per_epoch
    # --resume PATH continues from a given checkpoint, in another run directory too
    other = [a if a != "a" else "r2" for a in args3] + ["--resume", str(previous_path(last))]
    assert run_main(other) == 0
    assert load_checkpoint(tmp_path / "resnet18/r2/checkpoints/last.pth")["epoch"] == 2


def test_interrupted_run_resumes_to_identical_weights(tiny_data, tmp_path):
    """Three epochs straight equal two epochs, a stop, and a rerun of the same command."""
    extra = ("--epochs", "3", "--train_resize", "rrc", "--hflip", "0.5", "--scheduler", "step")
    assert run_main(tiny_train_args(tiny_data["folder"], tmp_path, "--tag", "full", *extra)) == 0
    full = tmp_path / "resnet18/full"
    part = tmp_path / "resnet18/part"
    (part / "checkpoints").mkdir(parents=True)
    shutil.copy(full / "config.yaml", part / "config.yaml")
    # the state after epoch 2 of 3: what a run stopped during epoch 3 leaves behind
    shutil.copy(previous_path(full / "checkpoints/last.pth"), part / "checkpoints/last.pth")
    shutil.copy(full / "checkpoints/best.pth", part / "checkpoints/best.pth")
    assert load_checkpoint(part / "checkpoints/last.pth")["epoch"] == 1
    assert run_main(tiny_train_args(tiny_data["folder"], tmp_path, "--tag", "part", *extra)) == 0
    assert history(part) == history(full)
    assert_same_weights(weights(part / "checkpoints/last.pth"), weights(full / "checkpoints/last.pth"))
    fo = load_checkpoint(full / "checkpoints/last.pth")["optimizer"]
    po = load_checkpoint(part / "checkpoints/last.pth")["optimizer"]
    for k in fo["state"]:
        assert torch.equal(fo["state"][k]["momentum_buffer"], po["state"][k]["momentum_buffer"])


def test_evaluation_reproduces_the_test_top1_and_writes_predictions(trained_run, tiny_data, tmp_path):
    run = copy_run(trained_run, tmp_path)
    trained_top1 = read_json(run / "metrics.json")["test"]["test_top1"]
    shutil.rmtree(run / "eval_test")
    for suffix in ("json", "yaml", "pkl"):
        out = tmp_path / f"pred.{suffix}"
        assert run_main(["--evaluation", "--resume", str(run / "checkpoints/best.pth"), "--data",
                         str(tiny_data["folder"]), "-j", "0", "--no_progress", "--out", str(out)]) == 0
        report = read_json(run / "eval_test/metrics.json")
        assert report["top1"] == trained_top1 and report["count"] == 12
        assert set(report["per_class"]) == set(TINY_CLASSES) and len(report["confusion_matrix"]) == 3
        assert sum(map(sum, report["confusion_matrix"])) == 12
        assert (run / "eval_test/confusion_matrix.png").stat().st_size > 1000
        rows = {"json": lambda p: read_json(p), "yaml": lambda p: yaml.safe_load(p.read_text()),
                "pkl": lambda p: pickle.loads(p.read_bytes())}[suffix](out)
        assert len(rows) == 12
        correct = sum(r["prediction"] == r["label"] for r in rows)
        assert 100.0 * correct / 12 == pytest.approx(trained_top1)
        assert all(r["scores"].index(max(r["scores"])) == r["prediction"] for r in rows)
        assert all(r["label_name"] == TINY_CLASSES[r["label"]] for r in rows)
    # no --data: the data the checkpoint was trained on (not the default data/digits, whose 10 classes
    # would not even match this 3-class model)
    assert run_main(["--evaluation", "--resume", str(run / "checkpoints/best.pth"), "-j", "0", "--no_progress"]) == 0
    assert read_json(run / "eval_test/metrics.json")["count"] == 12


def test_txt_and_zip_layouts_give_the_same_numbers(trained_run, tiny_data, tmp_path):
    for kind in ("txt", "zip"):
        assert run_main(tiny_train_args(tiny_data[kind], tmp_path, "--tag", kind, dataset=kind)) == 0
    runs = {"folder": trained_run, **{k: tmp_path / "resnet18" / k for k in ("txt", "zip")}}
    assert history(runs["folder"]) == history(runs["txt"]) == history(runs["zip"])
    tops = {k: read_json(r / "metrics.json")["test"]["test_top1"] for k, r in runs.items()}
    assert tops["folder"] == tops["txt"] == tops["zip"]
    # evaluating a checkpoint with no --data / --dataset reads its own data in its own layout
    assert run_main(["--evaluation", "--resume", str(runs["zip"] / "checkpoints/best.pth"), "--no_progress"]) == 0
    assert read_json(runs["zip"] / "eval_test/metrics.json")["top1"] == tops["zip"]


def test_pretrained_starts_a_new_run_from_weights(trained_run, tiny_data, tmp_path, caplog):
    best = trained_run / "checkpoints/best.pth"
    assert run_main(tiny_train_args(tiny_data["folder"], tmp_path, "--tag", "ft", "--epochs", "1",
                                    "--pretrained", str(best))) == 0
    assert "loaded every weight" in caplog.text
    assert [h["epoch"] for h in read_json(tmp_path / "resnet18/ft/metrics.json")["history"]] == [0]


def test_rerun_with_other_flags_is_refused_unless_overwrite(trained_run, tiny_data, tmp_path, caplog):
    copy_run(trained_run, tmp_path)  # a finished run of these flags: --lr 0.05, 2 epochs
    assert run_main(tiny_train_args(tiny_data["folder"], tmp_path, "--tag", "a", "--epochs", "1", "--lr", "0.01")) == 1
    assert "holds a run with other settings (--lr: 0.05 -> 0.01)" in caplog.text
    assert run_main(tiny_train_args(tiny_data["folder"], tmp_path, "--tag", "a", "--epochs", "1", "--lr", "0.01",
                                    "--overwrite")) == 0
    assert yaml.safe_load((tmp_path / "resnet18/a/config.yaml").read_text())["lr"] == 0.01


def test_amp_bf16_on_cpu(tiny_data, tmp_path):
    assert run_main(tiny_train_args(tiny_data["folder"], tmp_path, "--tag", "amp", "--epochs", "1", "--amp")) == 0
    assert read_json(tmp_path / "resnet18/amp/metrics.json")["history"][0]["train_loss"] > 0


def test_cli_exit_codes_and_messages(tiny_data, tmp_path):
    def cli(*args):
        return subprocess.run([sys.executable, "main.py", *args], cwd=ROOT, capture_output=True, text=True)
    r = cli()
    assert r.returncode == 2 and "choose a mode: --train, --evaluation" in r.stderr
    r = cli(*tiny_train_args(tiny_data["folder"], tmp_path, "--arch", "resnet181"))
    assert r.returncode == 1 and "unknown model 'resnet181'" in r.stderr and "Traceback" not in r.stderr
    r = cli(*tiny_train_args(tiny_data["folder"], tmp_path, "--tag", "cli", "--epochs", "1"))
    assert r.returncode == 0, r.stderr
    assert '"test_top1"' in r.stdout and "run directory" in r.stderr


@pytest.mark.slow
def test_log_lines_name_the_evaluated_checkpoint_and_no_fake_best(tiny_data, tmp_path, caplog):
    """The done line names the checkpoint actually evaluated (not always best.pth), and a run resumed
    inside its first epoch says no epoch was validated yet (it said 'best val top-1 so far -1.00')."""
    import logging

    from utils.checkpoint import save_checkpoint
    args = tiny_train_args(tiny_data["folder"], tmp_path, "--arch", "simple_cnn", "--epochs", "1")
    assert run_main(args) == 0
    ckpts = tmp_path / "simple_cnn/default/checkpoints"
    (ckpts / "best.pth").unlink()
    caplog.clear()
    with caplog.at_level(logging.INFO):
        assert run_main(args) == 0  # nothing left to train: evaluates what is there
    done = [r.getMessage() for r in caplog.records if r.getMessage().startswith("done:")][-1]
    evaluated = read_json(tmp_path / "simple_cnn/default/eval_test/metrics.json")["checkpoint"]
    assert done.endswith(f"({evaluated.rsplit('/', 1)[-1]})"), (done, evaluated)
    # a checkpoint as a stop at epoch 1, batch 1 leaves it: no epoch validated, best -1
    state = load_checkpoint(ckpts / "last.pth")
    state.update(epoch=-1, best_top1=-1.0, history=[], resume_at={
        "epoch": 0, "batch": 1, "partial": [{"loss": 8.8, "correct": 3, "seen": 8, "expected": 8}]})
    save_checkpoint(state, tmp_path / "stopped.pth")
    caplog.clear()
    with caplog.at_level(logging.INFO):
        assert run_main([*args, "--tag", "resumed", "--resume", str(tmp_path / "stopped.pth")]) == 0
    resumed = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("resumed from"))
    assert "epoch 1, batch 2 (no epoch validated yet)" in resumed and "-1.00" not in caplog.text
