"""Splits carved out of a train-only dataset end to end: split.json written, identical across reruns, worker
counts and torchrun processes; a resume that would split differently refused; evaluation, knowledge and export
read the run's parts."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from helpers import ROOT, read_json, run_main, tiny_train_args
from utils.sidefiles import read_rows

FRACTIONS = ("--val_fraction", "0.2", "--test_fraction", "0.2")


@pytest.fixture
def train_only(tiny_data, tmp_path):
    """A writable copy of the tiny digits with only DATA/train (10 images per class)."""
    root = tmp_path / "data"
    shutil.copytree(tiny_data["folder"] / "train", root / "train")
    return root


def split_args(data, out, tag, *extra):
    return tiny_train_args(data, out, "--arch", "simple_cnn", "--epochs", "1", "--tag", tag, *FRACTIONS, *extra)


def test_split_file_reruns_workers_resume_and_evaluation(train_only, tiny_data, tmp_path, caplog):
    out = tmp_path / "out"
    assert run_main(split_args(train_only, out, "a")) == 0
    run = out / "simple_cnn" / "a"
    table = read_json(run / "split.json")
    assert {name: len(rows) for name, rows in table["splits"].items()} == {"train": 18, "val": 6, "test": 6}
    assert read_json(run / "metrics.json")["test"]["test_split"] == "test"
    assert read_json(run / "eval_test/metrics.json")["count"] == 6  # the final test read the carved test part
    # the same split with two loader workers
    assert run_main(split_args(train_only, out, "b", "-j", "2")) == 0
    assert read_json(out / "simple_cnn" / "b" / "split.json") == table
    # the same command again resumes and finishes; another --split_seed is refused
    assert run_main(split_args(train_only, out, "a")) == 0
    assert read_json(run / "split.json") == table
    assert run_main(split_args(train_only, out, "a", "--split_seed", "1")) == 1
    assert "(--split_seed: 0 -> 1)" in caplog.text
    # evaluation of the run reads its held-out test part, knowledge its train part
    best = str(run / "checkpoints" / "best.pth")
    assert run_main(["--evaluation", "--resume", best, "--data", str(train_only), "-j", "0", "--no_progress"]) == 0
    report = read_json(run / "eval_test" / "metrics.json")
    assert report["split"] == "test" and report["count"] == 6
    assert run_main(["--knowledge", "train", "--resume", best, "--data", str(train_only), "-j", "0",
                     "--no_progress"]) == 0
    assert set(read_rows(train_only / "distill_simple_cnn.txt", 3)) == {key for key, _ in table["splits"]["train"]}
    assert run_main(["--jit", "--resume", best, "--data", str(train_only), "-j", "0"]) == 0  # verified on test
    # other data (with its own val and test on disk) is evaluated on its own test split
    assert run_main(["--evaluation", "--resume", best, "--data", str(tiny_data["folder"]), "-j", "0",
                     "--no_progress"]) == 0
    assert read_json(run / "eval_test" / "metrics.json")["count"] == 12
    # data that would now split differently: the resume is refused, naming the run folder
    gone = table["splits"]["train"][0][0]
    (train_only / gone).unlink()
    caplog.clear()
    assert run_main(split_args(train_only, out, "a")) == 1
    assert f"run folder {run}: the data would now split differently" in caplog.text
    assert read_json(run / "split.json") == table  # untouched
    assert run_main(["--evaluation", "--resume", best, "--data", str(train_only), "-j", "0"]) == 1


def test_fractions_with_a_val_split_on_disk_are_one_error(tiny_data, tmp_path, caplog):
    assert run_main(split_args(tiny_data["folder"], tmp_path, "v")) == 1
    assert "already has a val split" in caplog.text and "drop --val_fraction" in caplog.text


@pytest.mark.slow
def test_torchrun_ranks_write_the_same_split(train_only, tmp_path):
    out = tmp_path / "out"
    assert run_main(split_args(train_only, out, "one")) == 0
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "main.py"]
    r = subprocess.run([*launch, *split_args(train_only, out, "two", "-b", "4")], cwd=ROOT, capture_output=True,
                       text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-3000:]
    assert read_json(out / "simple_cnn" / "two" / "split.json") == read_json(out / "simple_cnn" / "one" / "split.json")
