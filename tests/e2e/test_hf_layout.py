"""--dataset hf end to end: the digits written as Hub-layout parquet by our converter (``utils/convert_data.py``;
``utils/make_digits.py --hf`` calls it) and by the ``datasets`` library alone (``save_to_disk``, ``to_parquet``) train
exactly as their class folders do (same history, same test top-1 for the same seed); a checkpoint evaluates on
its own hf data; workers, class-balanced sampling, automatic splits, the decoded cache and --skip_bad_images
work on it."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from helpers import assert_trains_like, layout_train_args, read_json, run_main


@pytest.fixture(autouse=True)
def hf_cache(tmp_path, monkeypatch):
    """The datasets library's cache in tmp_path (the parquet builder prepares its arrow files there)."""
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf_datasets"))


def train(data: Path, out: Path, dataset: str, tag: str, *extra: str) -> Path:
    assert run_main(layout_train_args(data, out, dataset, tag) + list(extra)) == 0
    return out / "simple_cnn" / tag


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> tuple[Path, Path]:
    """The digits, 3 per class and split (30 images each), as class folders, and their run (the reference)."""
    from dataloader.digits import make_digits
    base = tmp_path_factory.mktemp("hf_digits")
    folder = make_digits(base / "digits", per_class=3)
    return folder, train(folder, base / "out", "folder", "folder")


def test_parquet_written_by_the_converter_trains_like_the_folders(tmp_path, digits):
    folder, reference = digits
    from utils import convert_data  # the documented command, in this process
    assert convert_data.main(["--data", str(folder), "--to", "parquet", "--out", str(tmp_path / "converted"), "-j", "2",
                              "--no_progress"]) == 0
    assert sorted(p.name for p in (tmp_path / "converted" / "data").iterdir()) == [
        "test-00000-of-00001.parquet", "train-00000-of-00001.parquet", "validation-00000-of-00001.parquet"]
    converted = train(tmp_path / "converted", tmp_path / "out", "hf", "converted", "-j", "2")
    top1 = assert_trains_like(reference, converted)
    # a checkpoint given no --data / --dataset evaluates on the parquet files it was trained on
    assert run_main(["--evaluation", "--resume", str(converted / "checkpoints/best.pth"), "--no_progress"]) == 0
    report = read_json(converted / "eval_test/metrics.json")
    assert report["top1"] == top1 and report["count"] == 30


def write_without_our_code(folder: Path, saved: Path, parquet: Path) -> None:
    """The class folders written by the ``datasets`` library alone: a save_to_disk DatasetDict and Hub-layout
    parquet files, rows in the folders' order (classes, then files, by name)."""
    from datasets import ClassLabel, Dataset, DatasetDict, Features, Image
    names = sorted(p.name for p in (folder / "train").iterdir())
    features = Features({"image": Image(), "label": ClassLabel(names=names)})
    splits = {}
    for split, hub_name in (("train", "train"), ("val", "validation"), ("test", "test")):
        files = sorted((folder / split).glob("*/*.png"))
        splits[hub_name] = Dataset.from_dict({"image": [{"bytes": f.read_bytes(), "path": None} for f in files],
                                              "label": [names.index(f.parent.name) for f in files]}, features=features)
        (parquet / "data").mkdir(parents=True, exist_ok=True)
        splits[hub_name].to_parquet(str(parquet / "data" / f"{hub_name}-00000-of-00001.parquet"))
    DatasetDict(splits).save_to_disk(str(saved))


def test_a_dataset_written_by_the_datasets_library_trains_like_the_folders(tmp_path, digits):
    folder, reference = digits
    write_without_our_code(folder, tmp_path / "saved", tmp_path / "parquet")
    assert_trains_like(reference, train(tmp_path / "saved", tmp_path / "out", "hf", "saved"))
    assert_trains_like(reference, train(tmp_path / "parquet", tmp_path / "out", "hf", "parquet"))


def test_workers_balanced_sampling_automatic_splits_cache_and_bad_rows(tmp_path, digits):
    from datasets import ClassLabel, Dataset, Features, Image
    files = sorted((digits[0] / "train").glob("*/*.png"))
    rows = [{"bytes": f.read_bytes(), "path": None} for f in files] + [{"bytes": b"broken", "path": None}]
    labels = [int(f.parent.name) for f in files] + [0]
    Dataset.from_dict({"img": rows, "labels": labels},
                      features=Features({"img": Image(), "labels": ClassLabel(names=[str(i) for i in range(10)])})
                      ).save_to_disk(str(tmp_path / "one"))  # a single Dataset: the train split only
    run = train(tmp_path / "one", tmp_path / "out", "hf", "features", "-j", "2", "--class_balanced",
                "--val_fraction", "0.3", "--test_fraction", "0.2", "--skip_bad_images")
    rows = [key for part in json.loads((run / "split.json").read_text())["splits"].values() for key, _ in part]
    assert sorted(rows) == [f"train/{i:06d}" for i in range(31)]  # every row once, by its <split>/<row> key
    log = (run / "log.txt").read_text()
    assert "skipping" in log and "(train split) row 30" in log
    cached = train(tmp_path / "one", tmp_path / "out", "hf", "cached", "--cache_dataset", "memory",
                   "--val_fraction", "0.3", "--skip_bad_images")
    assert "(train split) row 30" in (cached / "log.txt").read_text()


def test_teacher_files_and_curricula_name_rows_by_their_keys(tiny_run, tiny_data, tmp_path):
    from dataloader import ClassificationDataset
    from dataloader.convert import convert_dataset
    from utils.sidefiles import read_rows
    data = convert_dataset(tiny_data["folder"], "folder", "parquet", tmp_path / "hf")
    best = str(tiny_run / "checkpoints" / "best.pth")
    for mode in (["--knowledge", "train"], ["--make_curriculum"]):
        assert run_main([*mode, "--resume", best, "--data", str(data), "--dataset", "hf", "-j", "0",
                         "--no_progress"]) == 0
    keys = {ClassificationDataset(data, "hf", "train").key(i) for i in range(30)}
    assert keys == {f"train/{i:06d}" for i in range(30)}
    assert set(read_rows(data / "distill_resnet18.txt", 3)) == set(read_rows(data / "curriculum.txt", 1)) == keys
    run = train(data, tmp_path / "out", "hf", "student", "--distill", "--curriculum_learning", "--epochs", "1")
    assert read_json(run / "metrics.json")["history"][0]["train_loss"] > 0


def predictions(args: list[str]) -> list[dict[str, str]]:
    """The rows of the predictions.csv that ``main.py --predict ...`` writes (its path: the printed summary)."""
    import contextlib
    import csv
    import io
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert run_main(args) == 0
    with open(json.loads(printed.getvalue())["predictions"], newline="") as f:
        return list(csv.DictReader(f))


def test_predict_names_hf_rows_by_their_keys_and_matches_the_folders(tmp_path, digits):
    """``--predict`` on the digits as Hub-layout parquet (``utils/make_digits.py --hf``) gives, row for row, the
    predictions of ``--predict`` on the same digits as class folders with the same checkpoint: every row of
    every split once, named ``<split>/<row>``; a row matched to its file by the path the converter stored."""
    import subprocess
    import sys

    import pyarrow.parquet as pq

    from helpers import ROOT
    folder, reference = digits
    r = subprocess.run([sys.executable, "utils/make_digits.py", "--out", str(folder), "--per_class", "3", "--hf",
                        str(tmp_path / "hf")], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    best = str(reference / "checkpoints/best.pth")
    common = ["--resume", best, "--topk", "3", "--no_progress"]
    by_file = {Path(row["path"]).relative_to(folder).as_posix(): row
               for row in predictions(["--predict", str(folder), *common, "-j", "0"])}
    hf_rows = predictions(["--predict", str(tmp_path / "hf"), *common, "-j", "2", "-b", "7"])
    stored = {}  # key <split>/<row> -> the file the row came from, as the converter wrote it in the image's path
    for split, hub in (("train", "train"), ("val", "validation"), ("test", "test")):
        (file,) = (tmp_path / "hf" / "data").glob(f"{hub}-*.parquet")
        paths = [image["path"] for image in pq.read_table(file, columns=["image"]).column("image").to_pylist()]
        stored.update({f"{split}/{row:06d}": path for row, path in enumerate(paths)})
    assert [row["path"] for row in hf_rows] == list(stored) and len(stored) == len(by_file) == 90
    # every image its own probabilities (the 2-epoch model is weak, its top class mostly the same): a row matched
    # to another image's file would differ
    assert len({row["prob_1"] for row in hf_rows}) > 80, sorted({row["prob_1"] for row in hf_rows})
    for row in hf_rows:
        twin = by_file[stored[row["path"]]]
        assert [row[f"class_{k}"] for k in (1, 2, 3)] == [twin[f"class_{k}"] for k in (1, 2, 3)], row["path"]
        assert all(abs(float(row[f"prob_{k}"]) - float(twin[f"prob_{k}"])) <= 2e-6 for k in (1, 2, 3)), row["path"]


@pytest.mark.slow
def test_torchrun_two_ranks_read_every_hf_row_once_and_evaluate(tmp_path, digits):
    """``torchrun --nproc_per_node=2`` with ``-j 2`` on a save_to_disk dataset with 29 train rows (one dropped:
    an odd count): every row is read in the epoch, once, but for the documented padding: the training sampler
    gives each rank ceil(29 / 2) = 15 rows, so one row is read twice (by the two ranks); the run evaluates
    the 30 test rows once each."""
    import os
    import subprocess
    import sys
    from collections import Counter

    from datasets import DatasetDict, load_from_disk

    from helpers import ROOT
    folder, _ = digits
    write_without_our_code(folder, tmp_path / "full", tmp_path / "parquet")
    full = load_from_disk(str(tmp_path / "full"))
    DatasetDict({**full, "train": full["train"].select(range(29))}).save_to_disk(str(tmp_path / "odd"))
    keys = tmp_path / "keys"
    args = layout_train_args(tmp_path / "odd", tmp_path / "out", "hf", "ddp") + ["--epochs", "1", "-j", "2"]
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "main.py",
                        *args], cwd=ROOT, capture_output=True, text=True, timeout=600,
                       env={**os.environ, "OMP_NUM_THREADS": "1", "PLAYGROUND_SAMPLE_KEYS": str(keys)})
    assert r.returncode == 0, r.stderr[-3000:]
    read: dict[str, Counter] = {}  # rank -> train keys it read
    files = list(tmp_path.glob("keys.r*w*"))  # the workers' reads (not keys.r0main: the augmented_samples.png batch)
    assert sorted(f.name for f in files) == ["keys.r0w0", "keys.r0w1", "keys.r1w0", "keys.r1w1"]
    for file in files:
        for line in file.read_text().splitlines():
            split, key = line.split(" ", 1)
            if split == "train":
                read.setdefault(file.name.split(".")[1][:2], Counter())[key] += 1
    assert sorted(read) == ["r0", "r1"] and [sum(read[r].values()) for r in ("r0", "r1")] == [15, 15]
    both = read["r0"] + read["r1"]
    assert set(both) == {f"train/{i:06d}" for i in range(29)}  # every row
    assert sorted(both.values()) == [1] * 28 + [2] and max(read["r0"].values()) == max(read["r1"].values()) == 1
    run = tmp_path / "out/simple_cnn/ddp"
    assert "(2 processes)" in (run / "log.txt").read_text()
    assert read_json(run / "eval_test/metrics.json")["count"] == 30  # every test row once, no padding
    assert len(read_json(run / "metrics.json")["history"]) == 1
