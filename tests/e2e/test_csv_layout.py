"""--dataset csv end to end: the digits written by ``utils/make_digits.py --csv`` train exactly as their class
folders do (same history, same test top-1 for the same seed), and a checkpoint evaluates on its own csv data."""
from __future__ import annotations

import subprocess
import sys

from helpers import ROOT, assert_trains_like, layout_train_args, read_json, run_main


def test_csv_written_by_the_converter_trains_like_the_folders(tmp_path):
    folder, tables = tmp_path / "digits", tmp_path / "digits_csv"
    r = subprocess.run([sys.executable, "utils/make_digits.py", "--out", str(folder), "--csv", str(tables),
                        "--per_class", "3"], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert (tables / "train.csv").read_text().splitlines()[:2] == ["path,label", "../digits/train/0/0000.png,0"]
    for data, kind in ((folder, "folder"), (tables, "csv")):
        assert run_main(layout_train_args(data, tmp_path / "out", kind)) == 0
    runs = {kind: tmp_path / "out" / "simple_cnn" / kind for kind in ("folder", "csv")}
    top1 = assert_trains_like(runs["folder"], runs["csv"])
    # a checkpoint given no --data / --dataset evaluates on the csv tables it was trained on
    assert run_main(["--evaluation", "--resume", str(runs["csv"] / "checkpoints/best.pth"), "--no_progress"]) == 0
    report = read_json(runs["csv"] / "eval_test/metrics.json")
    assert report["top1"] == top1 and report["count"] == 30
