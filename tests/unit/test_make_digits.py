"""dataloader/digits.py (the builder behind utils/make_digits.py) and dataloader/layout_writers.py: the bundled
dataset and the layout converters (``--hf``: the parquet writer of dataloader/convert.py)."""
from __future__ import annotations

import sys
from collections import Counter

import numpy as np
from PIL import Image

from dataloader import ClassificationDataset
from dataloader.digits import make_digits, split_indices


def test_split_is_stratified_70_15_15_and_fixed():
    from sklearn.datasets import load_digits
    y = load_digits().target
    a, b = split_indices(y), split_indices(y)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert [len(a[k]) for k in ("train", "val", "test")] == [1257, 270, 270]
    assert len(set(np.concatenate(list(a.values())))) == len(y)  # disjoint and complete
    for k, part in a.items():
        share = Counter(y[part])
        expected = Counter(y)
        for c in range(10):  # every class keeps its share within one image
            assert abs(share[c] - expected[c] * len(part) / len(y)) <= 1.0


def test_make_digits_writes_pngs_once(tmp_path):
    out = make_digits(tmp_path / "digits")
    files = sorted(out.rglob("*.png"))
    assert len(files) == 1797
    img = Image.open(files[0])
    assert img.size == (32, 32) and img.mode == "RGB"
    ds = ClassificationDataset(out, "folder", "test")
    assert ds.class_names == [str(i) for i in range(10)] and len(ds) == 270
    mtime = files[0].stat().st_mtime_ns
    make_digits(tmp_path / "digits")  # idempotent: a complete dataset is left alone
    assert files[0].stat().st_mtime_ns == mtime


def test_make_digits_per_class_keeps_the_first_n_of_each_class_and_split(tmp_path):
    full = make_digits(tmp_path / "full")
    tiny = make_digits(tmp_path / "tiny", per_class=3)
    for split in ("train", "val", "test"):
        for c in range(10):
            names = sorted(p.name for p in (full / split / str(c)).iterdir())[:3]
            assert sorted(p.name for p in (tiny / split / str(c)).iterdir()) == names
    assert make_digits(tmp_path / "tiny", per_class=2) and len(list(tiny.rglob("*.png"))) == 60  # rebuilt for N=2


def test_make_digits_hf_writes_the_hub_parquet_layout_twice_in_place(tmp_path, monkeypatch):
    from utils import make_digits as tool
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(sys, "argv", ["make_digits.py", "--out", str(tmp_path / "digits"), "--hf", str(tmp_path / "hf"),
                                      "--per_class", "2"])
    for _ in range(2):  # a second run replaces the parquet files whole
        tool.main()
    assert sorted(p.name for p in (tmp_path / "hf" / "data").iterdir()) == [
        "test-00000-of-00001.parquet", "train-00000-of-00001.parquet", "validation-00000-of-00001.parquet"]
    assert not list(tmp_path.glob(".hf*"))  # no temporary or old folder left
    folder, hf = (ClassificationDataset(tmp_path / d, k, "val") for d, k in (("digits", "folder"), ("hf", "hf")))
    assert hf.targets == folder.targets and hf.reader(hf.samples[5][0]) == folder.reader(folder.samples[5][0])
