"""Automatic splits carved out of train (dataloader/splits.py): per-class counts, disjoint and complete parts,
seeded, the split file and its check, and the datasets every layout builds from it."""
from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

import config
from applications.setup.common import build_dataset
from dataloader import ClassificationDataset, DatasetError
from dataloader.layout_writers import write_csv_tables, write_txt_lists, write_zip_archives
from dataloader.splits import Holdout, SplitError, carve, check_split, split_table, write_split
from helpers import read_json


def _labels(sizes: list[int]) -> tuple[list[str], list[int]]:
    labels = [c for c, n in enumerate(sizes) for _ in range(n)]
    return [f"c{c}/{i:03d}.png" for i, c in enumerate(labels)], labels


@pytest.mark.parametrize("val,test", [(0.1, 0.0), (0.2, 0.2), (0.15, 0.3), (0.4, 0.2), (0.05, 0.05)])
def test_per_class_counts_within_one_of_the_fraction(val, test):
    sizes = [1, 2, 3, 7, 10, 13, 50, 101]
    keys, labels = _labels(sizes)
    parts = carve(keys, labels, Holdout(val, test, seed=3))
    for c, n in enumerate(sizes):
        for name, fraction in (("val", val), ("test", test)):
            count = sum(labels[i] == c for i in parts.get(name, []))
            assert abs(count - fraction * n) <= 1 and count == round(fraction * n), (c, n, name)
    # disjoint and complete
    every = [i for indices in parts.values() for i in indices]
    assert sorted(every) == list(range(len(keys)))
    assert set(parts) == {"train", *(s for s, f in (("val", val), ("test", test)) if f > 0)}


def test_same_seed_same_split_another_seed_another_and_listing_order_does_not_matter():
    keys, labels = _labels([20, 30, 25])
    first = split_table(keys, labels, Holdout(0.2, 0.2, seed=0))
    assert split_table(keys, labels, Holdout(0.2, 0.2, seed=0)) == first
    assert split_table(keys, labels, Holdout(0.2, 0.2, seed=1))["splits"] != first["splits"]
    shuffled = list(reversed(range(len(keys))))  # the layout lists the same files in another order
    again = split_table([keys[i] for i in shuffled], [labels[i] for i in shuffled], Holdout(0.2, 0.2, seed=0))
    assert {n: sorted(map(tuple, rows)) for n, rows in again["splits"].items()} == \
        {n: sorted(map(tuple, rows)) for n, rows in first["splits"].items()}


def test_a_class_left_without_training_images_is_refused():
    keys, labels = _labels([10, 2])
    with pytest.raises(SplitError, match="class 1 has 2 image"):
        carve(keys, labels, Holdout(0.5, 0.4, seed=0))


def test_split_file_check_refuses_changed_data_and_settings(tmp_path):
    keys, labels = _labels([10, 10])
    table = split_table(keys, labels, Holdout(0.2, 0.0, seed=0))
    assert check_split(tmp_path, table) is False  # nothing saved yet
    write_split(tmp_path, table)
    assert read_json(tmp_path / "split.json") == table
    assert check_split(tmp_path, table) is True
    changed = split_table(keys[:-1], labels[:-1], Holdout(0.2, 0.0, seed=0))  # one image removed
    with pytest.raises(SplitError, match=rf"run folder {tmp_path}: .*split '(train|val)': 1 sample\(s\) left"):
        check_split(tmp_path, changed)
    with pytest.raises(SplitError, match=r"split_seed 0 -> 5"):
        check_split(tmp_path, split_table(keys, labels, Holdout(0.2, 0.0, seed=5)))


@pytest.mark.parametrize("kind", ["folder", "txt", "zip", "csv"])
def test_every_layout_carves_its_train_split(tiny_data, tmp_path, kind):
    folder = tmp_path / "folder"
    shutil.copytree(tiny_data["folder"] / "train", folder / "train")  # train only
    writers = {"folder": lambda: folder, "txt": lambda: write_txt_lists(folder, tmp_path / "txt"),
               "zip": lambda: write_zip_archives(folder, tmp_path / "zip"),
               "csv": lambda: write_csv_tables(folder, tmp_path / "csv")}
    root = writers[kind]()
    holdout = Holdout(0.2, 0.2, seed=0)
    sets = {s: ClassificationDataset(root, kind, s, holdout=holdout) for s in ("train", "val", "test")}
    whole = ClassificationDataset(root, kind, "train")
    keys = {s: [d.key(i) for i in range(len(d))] for s, d in sets.items()}
    assert sorted(k for ks in keys.values() for k in ks) == sorted(whole.key(i) for i in range(len(whole)))
    assert [len(keys[s]) for s in ("train", "val", "test")] == [18, 6, 6]  # 10 per class: 6 / 2 / 2
    assert sets["val"].split_table["splits"]["val"] == [[k, t] for k, t in zip(keys["val"], sets["val"].targets)]
    assert sets["test"].load(0).shape[0] == 3  # read from train's files or archive


def test_fractions_with_a_split_on_disk_are_refused(tiny_data):
    with pytest.raises(DatasetError, match=r"already has a val split.*drop --val_fraction"):
        ClassificationDataset(tiny_data["folder"], "folder", "val", holdout=Holdout(0.2, 0.0, seed=0))


def test_build_dataset_falls_back_to_the_carved_val_split(tiny_data, tmp_path):
    root = tmp_path / "d"
    shutil.copytree(tiny_data["folder"] / "train", root / "train")
    cfg, _ = config.parse_command_line(["--train", "--data", str(root), "--val_fraction", "0.3"])
    dataset = build_dataset(cfg, "test", ["0", "1", "7"], train=False, fallback=True)
    assert dataset.split == "val" and len(dataset) == 9
    assert all(dataset.key(i).startswith("train/") for i in range(len(dataset)))


@pytest.mark.parametrize("flags,message", [(["--val_fraction", "0.6", "--test_fraction", "0.5"], "must be below 1"),
                                           (["--val_fraction", "1"], r"--val_fraction must be in \[0, 1\)")])
def test_fraction_flags_are_checked(flags, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        config.parse_command_line(["--train", *flags])
    assert exit_info.value.code == 2
    assert re.search(message, capsys.readouterr().err)


def test_paths_are_kept_relative(tmp_path):
    keys, labels = _labels([5])
    table = split_table(keys, labels, Holdout(0.2, 0.0, seed=0))
    assert all(not Path(k).is_absolute() for rows in table["splits"].values() for k, _ in rows)


def _label_sets(n: int = 300, classes: int = 12, seed: int = 0) -> tuple[list[str], list[tuple[int, ...]]]:
    """``n`` images with 1-3 labels each, class ``c`` drawn with weight ``0.6 ** c`` (so the last classes have
    a handful of images), plus a few classes of exactly 2 and 3 images."""
    import random
    rng = random.Random(seed)
    weights = [0.6 ** c for c in range(classes)]
    labels = [tuple(sorted(set(rng.choices(range(classes), weights, k=rng.randint(1, 3))))) for _ in range(n)]
    labels += [(classes,), (0, classes), (classes + 1,), (classes + 1, 2), (classes + 1,)]  # 2 and 3 images
    return [f"img/{i:04d}.png" for i in range(len(labels))], labels


def _count(labels, indices, c) -> int:
    return sum(c in labels[i] for i in indices)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_label_sets_every_class_of_two_images_is_in_train_and_val(seed):
    """Iterative stratification of label sets: parts disjoint and complete, every class of >= 2 images in both
    train and val (>= 3: in train, val and test too), a large class's val share within 3 images of the fraction,
    val about its fraction of the images; a pure function of (keys, labels, seed), whatever the listing order."""
    keys, labels = _label_sets(seed=seed)
    counts = {c: sum(c in label for label in labels) for c in set().union(*labels)}
    parts = carve(keys, labels, Holdout(0.2, 0.0, seed=seed))
    assert sorted(parts["train"] + parts["val"]) == list(range(len(keys)))
    for c, n in counts.items():
        if n >= 2:
            assert _count(labels, parts["train"], c) and _count(labels, parts["val"], c), (c, n)
        if n >= 30:
            assert abs(_count(labels, parts["val"], c) - 0.2 * n) <= 3, (c, n)
    assert abs(len(parts["val"]) - 0.2 * len(keys)) <= 0.05 * len(keys)
    both = carve(keys, labels, Holdout(0.2, 0.2, seed=seed))
    for c, n in counts.items():
        if n >= 3:
            assert all(_count(labels, both[name], c) for name in ("train", "val", "test")), (c, n)
    order = list(reversed(range(len(keys))))
    again = carve([keys[i] for i in order], [labels[i] for i in order], Holdout(0.2, 0.0, seed=seed))
    assert sorted(keys[order[i]] for i in again["val"]) == sorted(keys[i] for i in parts["val"])
    assert carve(keys, labels, Holdout(0.2, 0.0, seed=seed + 10)) != parts


def test_label_sets_split_file_round_trips_and_a_class_without_training_image_is_refused(tmp_path):
    keys, labels = _label_sets(60)
    table = split_table(keys, labels, Holdout(0.2, 0.0, seed=0))
    write_split(tmp_path, table)  # sets saved as JSON lists
    assert check_split(tmp_path, table) is True
    with pytest.raises(SplitError, match=r"split '(train|val)': \d+ sample\(s\) left"):  # a set changed: differs
        check_split(tmp_path, split_table(keys, [(0, 1, 2)] + labels[1:], Holdout(0.2, 0.0, seed=0)))
    with pytest.raises(SplitError, match=r"class 0 has 1 image\(s\).*no training image"):
        carve(["a", "b"], [(0,), ()], Holdout(0.9, 0.0, seed=0))
    empties = carve([f"k{i}" for i in range(10)], [(0,)] * 5 + [()] * 5, Holdout(0.2, 0.0, seed=0))
    assert sum(i >= 5 for i in empties["val"]) == 1  # images without labels are split like one class


def test_a_multi_label_csv_set_carves_its_train_split(tmp_path):
    from PIL import Image

    from dataloader import Columns
    from dataloader.labels import LabelSets
    (tmp_path / "img").mkdir()
    keys, labels = _label_sets(40, classes=4)
    rows = ["path,label"]
    for key, label in zip(keys, labels):
        Image.new("RGB", (4, 4)).save(tmp_path / key)
        rows.append(f"{key},{' '.join(f'c{c}' for c in label)}")
    (tmp_path / "train.csv").write_text("\n".join(rows) + "\n")
    columns, holdout = Columns(sets=LabelSets()), Holdout(0.25, 0.0, seed=1)
    val = ClassificationDataset(tmp_path, "csv", "val", holdout=holdout, columns=columns)
    train = ClassificationDataset(tmp_path, "csv", "train", holdout=holdout, columns=columns)
    assert val.multi_label and len(val) + len(train) == len(keys)
    assert {c for label in val.targets for c in label} == set(range(len(val.class_names)))  # every class in val
    assert val.split_table["splits"]["val"] == [[val.key(i), t] for i, t in enumerate(val.targets)]
