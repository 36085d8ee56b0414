"""dataloader/digits.py (the builder behind utils/make_digits.py) and dataloader/layout_writers.py: the bundled
dataset and the layout converters (``--hf``: the parquet writer of dataloader/convert.py); the multi-label digit
mosaics (``--multi_label``)."""
from __future__ import annotations

import re
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dataloader import ClassificationDataset
from dataloader.digits import (
    MOSAIC_SIZES,
    SIZE,
    load_digits_uint8,
    make_digits,
    make_mosaic,
    mosaic_plan,
    split_indices,
    upscale,
)


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


# ------------------------------------------------------------------------------- multi-label mosaics
TINY = {"train": 40, "val": 12, "test": 12}


def _rows(root: Path, split: str) -> list[tuple[str, str]]:
    lines = (root / f"{split}.csv").read_text().splitlines()
    assert lines[0] == "path,label"
    return [tuple(line.split(",")) for line in lines[1:]]


def test_mosaic_labels_are_the_digits_drawn_and_match_the_pixels(tmp_path):
    out = make_mosaic(tmp_path / "mosaic", TINY)
    images, targets = load_digits_uint8()
    plan = mosaic_plan(targets, TINY)
    for split, mosaics in plan.items():
        rows = _rows(out, split)
        assert len(rows) == len(mosaics) == TINY[split]
        for (path, label), mosaic in zip(rows, mosaics):
            assert label == " ".join(str(d) for d in sorted({int(targets[s]) for _, s in mosaic}))
            img = Image.open(out / path)
            assert img.size == (2 * SIZE, 2 * SIZE) and img.mode == "RGB"
            pixels = np.asarray(img)
            cells = {r * 2 + c: pixels[r * SIZE:(r + 1) * SIZE, c * SIZE:(c + 1) * SIZE]
                     for r in (0, 1) for c in (0, 1)}
            inked = {cell for cell, block in cells.items() if block.any()}
            assert inked == {cell for cell, _ in mosaic} and len(inked) == len(mosaic)  # the others are black
            for cell, source in mosaic:  # each drawn cell is its source digit, upscaled as the single-label set
                assert np.array_equal(cells[cell], np.asarray(upscale(images[source])))


def test_mosaic_plan_splits_sources_disjointly_and_draws_1_to_3_cells_uniformly():
    _, targets = load_digits_uint8()
    plan, parts = mosaic_plan(targets), split_indices(targets)
    sources = {split: {s for mosaic in mosaics for _, s in mosaic} for split, mosaics in plan.items()}
    for split in plan:
        assert len(plan[split]) == MOSAIC_SIZES[split] and sources[split] <= set(parts[split].tolist())
    train, val, test = sources["train"], sources["val"], sources["test"]
    assert not (train & val or train & test or val & test)
    assert {int(targets[s]) for s in sources["train"]} == set(range(10))
    counts = Counter(len(mosaic) for mosaic in plan["train"])
    assert set(counts) == {1, 2, 3} and all(abs(n - 4000 / 3) < 150 for n in counts.values())  # ~ 4.5 sigma
    for mosaics in plan.values():
        for mosaic in mosaics:
            cells, drawn = [c for c, _ in mosaic], [s for _, s in mosaic]
            assert cells == sorted(set(cells)) and set(cells) <= {0, 1, 2, 3} and len(set(drawn)) == len(drawn)
    twice = [m for m in plan["train"] if len({int(targets[s]) for _, s in m}) < len(m)]
    assert twice, "a digit drawn twice in one mosaic is one label: the plan should hold such mosaics"
    # a split's draws do not depend on another split's size
    assert mosaic_plan(targets, TINY)["val"] == plan["val"][:TINY["val"]]


def test_mosaic_csv_tables_and_classes_are_exact(tmp_path):
    out = make_mosaic(tmp_path / "mosaic", TINY)
    assert (out / "classes.txt").read_text() == "".join(f"{d}\n" for d in range(10))
    for split in ("train", "val", "test"):
        text = (out / f"{split}.csv").read_text()
        assert text.endswith("\n") and "\r" not in text and text.startswith("path,label\n")
        rows = _rows(out, split)
        assert [p for p, _ in rows] == [f"images/{split}/{i:05d}.png" for i in range(TINY[split])]
        assert sorted(p.name for p in (out / "images" / split).iterdir()) == [Path(p).name for p, _ in rows]
        for _, label in rows:
            assert re.fullmatch(r"\d( \d){0,2}", label)
            digits = [int(d) for d in label.split(" ")]
            assert digits == sorted(set(digits))
    assert {d for _, label in _rows(out, "train") for d in label.split()} == {str(d) for d in range(10)}


def test_mosaic_is_byte_identical_each_time_and_written_once(tmp_path):
    a, b = make_mosaic(tmp_path / "a", TINY), make_mosaic(tmp_path / "b", TINY)
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file()) and len(files) == 64 + 5
    assert all((a / f).read_bytes() == (b / f).read_bytes() for f in files)
    mtime = (a / "train.csv").stat().st_mtime_ns
    make_mosaic(tmp_path / "a", TINY)  # a complete set is left alone
    assert (a / "train.csv").stat().st_mtime_ns == mtime
    make_mosaic(tmp_path / "a", {**TINY, "val": 5})  # another size: rebuilt
    assert len(_rows(a, "val")) == 5 and sorted(p.name for p in tmp_path.iterdir()) == ["a", "b"]


def test_make_digits_multi_label_cli_smoke_size_and_too_few_mosaics(tmp_path, monkeypatch):
    from utils import make_digits as tool
    argv = ["make_digits.py", "--out", str(tmp_path / "digits"), "--multi_label", str(tmp_path / "ml"), "--per_class"]
    monkeypatch.setattr(sys, "argv", argv + ["1"])
    tool.main()
    assert [len(_rows(tmp_path / "ml", s)) for s in ("train", "val", "test")] == [10, 10, 10]
    monkeypatch.setattr(sys, "argv", argv[:4] + [str(tmp_path / "few"), "--per_class", "0"])
    with pytest.raises(SystemExit) as e:  # one line naming what and how to fix, no folder left
        tool.main()
    assert "train mosaics show only the digits []" in str(e.value) and "--per_class" in str(e.value)
    assert "\n" not in str(e.value) and not list(tmp_path.glob("few*"))


def test_builders_running_at_once_leave_one_complete_dataset(tmp_path):
    """Three processes building the same mosaics into one folder at once (torchrun ranks, parallel benchmarks):
    each stages apart, so the folder ends complete and byte-identical to a lone build, with no staging left.
    (With one shared staging folder, one builder deleted another's files mid-write and a set with missing images
    was marked complete.)"""
    import subprocess
    sizes = {"train": 300, "val": 20, "test": 20}
    code = ("import sys; sys.path.insert(0, sys.argv[1]); from dataloader.digits import make_mosaic; "
            f"make_mosaic(sys.argv[2], {sizes!r})")
    root = str(Path(__file__).resolve().parents[2])
    procs = [subprocess.Popen([sys.executable, "-c", code, root, str(tmp_path / "shared")]) for _ in range(3)]
    assert all(p.wait(timeout=300) == 0 for p in procs)
    alone = make_mosaic(tmp_path / "alone", sizes)
    files = sorted(p.relative_to(alone) for p in alone.rglob("*") if p.is_file())
    assert len(files) == 340 + 5
    assert sorted(p.relative_to(tmp_path / "shared") for p in (tmp_path / "shared").rglob("*") if p.is_file()) == files
    assert all((alone / f).read_bytes() == (tmp_path / "shared" / f).read_bytes() for f in files)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["alone", "shared"]
