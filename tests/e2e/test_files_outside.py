"""Two --predict processes started at once into the same run directory (issue 25, item 3): each ends with
a folder of its own whose predictions.csv, predictions.log and annotated images name only its source."""
from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

from helpers import ROOT, calibrated_checkpoint


def test_two_predict_processes_at_once_write_two_consistent_folders(tiny_data, tmp_path):
    ckpt = calibrated_checkpoint(tmp_path / "run", "resnet18", tiny_data["folder"], 16)
    sources = [shutil.copytree(tiny_data["folder"] / split, tmp_path / split / "pictures") for split in ("val", "test")]
    procs = [subprocess.Popen([sys.executable, str(ROOT / "main.py"), "--predict", str(source), "--resume", str(ckpt),
                               "-j", "0", "-b", "2", "--no_progress", "-v", "-s"], cwd=tmp_path,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for source in sources]
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-3000:]
        results.append(json.loads(out))

    folders = sorted(p.name for p in (tmp_path / "run" / "predict").iterdir())
    assert folders == ["pictures", "pictures-2"]
    assert sorted(Path(r["output_dir"]).name for r in results) == folders
    for source, result in zip(sources, results):
        folder = Path(result["output_dir"])
        with open(folder / "predictions.csv", newline="") as f:
            rows = [Path(row["path"]) for row in csv.DictReader(f)]
        logged = [Path(line.split("\t")[0]) for line in (folder / "predictions.log").read_text().splitlines()]
        annotated = sorted(p.stem.split("_", 1)[1] for p in (folder / "images").iterdir())  # <index>_<stem>.png
        expected = sorted(source.rglob("*.png"))
        assert sorted(rows) == expected and sorted(logged) == expected, folder
        assert annotated == sorted(p.stem for p in expected), folder
