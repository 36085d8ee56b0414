"""dataloader/datasets.py CsvLayout (``--dataset csv``): CSV and JSONL label tables, per split or one
labels table with a split column, class names or integers with classes.txt, and each error in one line
naming the file and the row's line."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from dataloader import ClassificationDataset, Columns, DatasetError, read_class_names, resolve_split
from dataloader.checking import check_dataset
from helpers import ROOT, TINY_CLASSES, TINY_COUNTS


def image(path: Path, value: int) -> str:
    """A 4x4 grey PNG of ``value`` at ``path``; its name relative to the path's grandparent (the table's folder)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (4, 4), (value,) * 3).save(path)
    return path.relative_to(path.parent.parent).as_posix()


def table(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def one_line_error(match: str, fn, *args, **kwargs) -> str:
    """The DatasetError ``fn`` raises: one line, matching ``match``."""
    with pytest.raises(DatasetError) as info:
        fn(*args, **kwargs)
    message = str(info.value)
    assert "\n" not in message and re.search(match, message), message
    return message


def test_quoted_commas_spaces_and_unicode_names_and_classes(tmp_path):
    a = image(tmp_path / "imgs" / "chat, noir é.png", 10)
    b = image(tmp_path / "imgs" / "日本 猫.png", 20)
    c = image(tmp_path / "imgs" / "plain.png", 30)
    table(tmp_path / "train.csv", f'path,label\n"{a}",chat noir\n{b},ünïcode\n"{c}","chat noir"\n')
    table(tmp_path / "val.csv", f'label,extra,path\nünïcode,"x, y",{b}\n')
    assert read_class_names(tmp_path, "csv") == ["chat noir", "ünïcode"]  # sorted, as folder names are
    ds = ClassificationDataset(tmp_path, "csv", "train")
    assert [Path(p).name for p, _ in ds.samples] == ["chat, noir é.png", "日本 猫.png", "plain.png"]
    assert ds.targets == [0, 1, 0] and ds.key(0) == "imgs/chat, noir é.png"
    assert ds[1][0][0, 0, 0].item() == 20
    assert ClassificationDataset(tmp_path, "csv", "val").targets == [1]  # columns in any order, extra ones ignored


def test_one_labels_table_with_a_split_column(tmp_path):
    rows = [image(tmp_path / "imgs" / f"{i}.png", i) for i in range(5)]
    table(tmp_path / "labels.csv", "path,label,split\n" + "".join(
        f"{p},{label},{split}\n" for p, label, split in
        zip(rows, ["b", "a", "b", "a", "b"], ["train", "train", "val", "train", "val"])))
    assert read_class_names(tmp_path, "csv") == ["a", "b"]
    assert ClassificationDataset(tmp_path, "csv", "train").targets == [1, 0, 0]
    assert ClassificationDataset(tmp_path, "csv", "val").targets == [1, 1]
    assert resolve_split(tmp_path, "csv", "test") == "val"  # no test rows: the test split falls back to val
    table(tmp_path / "labels.csv", f"path,label,split\n{rows[0]},a,train\n{rows[1]},b,tset\n")
    one_line_error(r"labels\.csv:3: split 'tset' is not train, val or test$", ClassificationDataset, tmp_path,
                   "csv", "train")


def test_a_labels_table_without_a_split_column_is_all_train(tmp_path):
    rows = [image(tmp_path / "imgs" / f"{i}.png", i) for i in range(2)]
    table(tmp_path / "labels.csv", f"path,label\n{rows[0]},x\n{rows[1]},y\n")
    assert len(ClassificationDataset(tmp_path, "csv", "train")) == 2
    one_line_error(r"split 'val' not found", resolve_split, tmp_path, "csv", "val")
    table(tmp_path / "labels.csv", "path,label,split\n,x,train\n")  # no good train row: the bad row's error, not "none"
    one_line_error(r"labels\.csv:2: malformed row: empty 'path'$", read_class_names, tmp_path, "csv")


def test_integer_labels_with_classes_txt(tmp_path):
    rows = [image(tmp_path / "imgs" / f"{i}.png", i) for i in range(3)]
    table(tmp_path / "classes.txt", "cat\ndog\nbird\n")
    table(tmp_path / "train.csv", f"path,label\n{rows[0]},2\n{rows[1]},dog\n{rows[2]},0\n")
    assert read_class_names(tmp_path, "csv") == ["cat", "dog", "bird"]  # classes.txt's order, not sorted
    assert ClassificationDataset(tmp_path, "csv", "train").targets == [2, 1, 0]
    table(tmp_path / "classes.txt", "1\n0\n")  # a label that is a class name is that class, not a line number
    table(tmp_path / "train.csv", f"path,label\n{rows[0]},0\n{rows[1]},1\n")
    assert ClassificationDataset(tmp_path, "csv", "train").targets == [1, 0]
    table(tmp_path / "classes.txt", "cat\ndog\nbird\n")
    table(tmp_path / "train.csv", f"path,label\n{rows[0]},3\n")
    one_line_error(r"train\.csv:2: label '3' is not in \S*classes\.txt \(a class name, or an integer 0\.\.2\)",
                   ClassificationDataset, tmp_path, "csv", "train")
    table(tmp_path / "train.csv", f"path,label\n{rows[0]},horse\n")
    one_line_error(r"train\.csv:2: label 'horse' is not in \S*classes\.txt", ClassificationDataset, tmp_path, "csv",
                   "train")


def test_jsonl_tables_per_split_and_with_a_split_key(tmp_path):
    rows = [image(tmp_path / "imgs" / f"{i}.png", i) for i in range(3)]
    lines = [{"path": rows[0], "label": "x"}, {"path": rows[1], "label": "y", "note": [1]}]
    table(tmp_path / "train.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in lines) + "\n")
    table(tmp_path / "val.jsonl", json.dumps({"path": rows[2], "label": "y"}) + "\n")
    assert ClassificationDataset(tmp_path, "csv", "train").targets == [0, 1]
    assert ClassificationDataset(tmp_path, "csv", "val").targets == [1]
    other = tmp_path / "labels_only"
    shutil.copytree(tmp_path / "imgs", other / "imgs")
    table(other / "labels.jsonl", "".join(json.dumps(r) + "\n" for r in [
        {"file": rows[0], "cls": 1, "split": "train"}, {"file": rows[1], "cls": 0, "split": "train"},
        {"file": rows[2], "cls": 0, "split": "test"}]))
    cols = Columns(path="file", label="cls")
    assert read_class_names(other, "csv", cols) == ["0", "1"]  # integers without classes.txt are names
    assert ClassificationDataset(other, "csv", "test", columns=cols).targets == [0]
    table(tmp_path / "val.jsonl", '{"path": "imgs/2.png", "label": "y"}\n["imgs/2.png", "y"]\n{"path": 3')
    one_line_error(r"val\.jsonl:2: malformed row: not a JSON object$", ClassificationDataset, tmp_path, "csv", "val")
    errors: list[DatasetError] = []
    from dataloader.datasets import get_layout
    get_layout("csv").samples(tmp_path, "val", ["x", "y"], errors=errors)
    assert [str(e).split(": ", 1)[0].rsplit("/", 1)[1] for e in errors] == ["val.jsonl:2", "val.jsonl:3"]


def test_columns_picked_by_flags_a_byte_order_mark_and_spaces_around_values(tmp_path):
    row = image(tmp_path / "imgs" / "0.png", 0)
    (tmp_path / "train.csv").write_bytes(f"\ufeffid,file,species\n1, {row} , fox \n".encode())  # as Excel saves
    ds = ClassificationDataset(tmp_path, "csv", "train", columns=Columns("file", "species"))
    assert ds.class_names == ["fox"] and len(ds) == 1
    table(tmp_path / "train.jsonl", json.dumps({"path": row, "label": "fox"}) + "\n")
    one_line_error(r"both \S*train\.csv and \S*train\.jsonl exist: keep one$", read_class_names, tmp_path, "csv")
    (tmp_path / "train.csv").unlink()
    one_line_error(r"train\.jsonl:1: no key 'file' \(found: path, label\); name the columns with --path_col and "
                   r"--label_col$", ClassificationDataset, tmp_path, "csv", "train", columns=Columns("file", "label"))


@pytest.fixture
def csv_data(tmp_path):
    """Two images and a train.csv / val.csv naming them (classes a, b)."""
    rows = [image(tmp_path / "imgs" / f"{i}.png", i) for i in range(2)]
    table(tmp_path / "train.csv", f"path,label\n{rows[0]},a\n{rows[1]},b\n")
    table(tmp_path / "val.csv", f"path,label\n{rows[0]},a\n")
    return tmp_path


@pytest.mark.parametrize("split, text, match", [
    ("train", "path,label\nimgs/0.png,a\nimgs/1.png,b,extra\n",
     r"train\.csv:3: malformed row: 3 fields where the header has 2 \(quote a value that holds a comma"),
    ("train", "path,label\nimgs/0.png,a\n,b\n", r"train\.csv:3: malformed row: empty 'path'"),
    ("train", "path,label\nimgs/0.png,a\nimgs/1.png,\n", r"train\.csv:3: malformed row: empty 'label'"),
    ("train", "path,label\nimgs/0.png,a\nimgs/gone.png,b\n",
     r"train\.csv:3: image '\S*imgs/gone\.png' does not exist \(relative paths resolve against"),
    ("val", "path,label\nimgs/0.png,a\nimgs/1.png,c\n",
     r"val\.csv:3: label 'c' is not a training class \(training classes: a, b\); fix the label"),
    ("val", "file,label\nimgs/0.png,a\n",
     r"val\.csv:1: no column 'path' in the header \(found: file, label\); name the columns with --path_col and "
     r"--label_col$"),
    ("val", "path,label\nimgs/0.png,a\nimgs/0.png,b\n",
     r"val\.csv:3: '\S*0\.png' \(label 1\) is also on line 2 \(label 0\)"),
    ("val", "", r"val\.csv: empty: expected a header row naming the columns \(path,label\)"),
])
def test_each_error_is_one_line_naming_file_and_row(csv_data, split, text, match):
    table(csv_data / f"{split}.csv", text)
    one_line_error(match, ClassificationDataset, csv_data, "csv", split, class_names=["a", "b"])


def test_tables_of_two_kinds_and_undecodable_text_are_errors(csv_data):
    table(csv_data / "labels.csv", "path,label\n")
    one_line_error(r"both \S*labels\.csv and \S*train\.csv exist: keep the one labels table", read_class_names,
                   csv_data, "csv")
    (csv_data / "labels.csv").unlink()
    (csv_data / "val.csv").write_bytes(b"path,label\nimgs/0.png,\xe9t\xe9\n")
    one_line_error(r"val\.csv: not UTF-8 text \(invalid continuation byte at byte \d+\); save it as UTF-8",
                   ClassificationDataset, csv_data, "csv", "val", class_names=["a", "b"])


def test_converted_tiny_digits_match_the_folder_layout(tiny_data):
    folder = ClassificationDataset(tiny_data["folder"], "folder", "train")
    tables = ClassificationDataset(tiny_data["csv"], "csv", "train")
    assert tables.class_names == list(TINY_CLASSES) and tables.targets == folder.targets
    assert [Path(p).resolve() for p, _ in tables.samples] == [Path(p).resolve() for p, _ in folder.samples]
    assert len(tables) == TINY_COUNTS["train"] * len(TINY_CLASSES)
    assert torch.equal(tables[5][0], folder[5][0])
    assert "label" in (tiny_data["csv"] / "train.csv").read_text().splitlines()[0]


def test_check_images_checks_a_csv_dataset(tiny_data, tmp_path):
    assert {f.status for f in check_dataset(tiny_data["csv"])} == {"ok"}
    root = tmp_path / "labels"
    rows = [image(root / "imgs" / f"{i}.png", i) for i in range(3)]
    (root / "imgs" / "2.png").write_bytes(b"not a png")
    table(root / "labels.csv", f"file,cls,split\n{rows[0]},a,train\n{rows[1]},b,train\nimgs/gone.png,a,val\n"
                               f"{rows[2]},b,trian\n{rows[2]},a,test\n")
    r = subprocess.run([sys.executable, "utils/check_images.py", str(root), "--path_col", "file", "--label_col", "cls",
                        "-j", "1", "--no_progress"], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 1, r.stderr
    bad = [line for line in r.stdout.splitlines() if line.startswith("BAD")]
    assert len(bad) == 3, r.stdout  # the bad split value once, though every split reads the table
    assert any(re.search(r"labels\.csv:4: image '\S*gone\.png' does not exist", line) for line in bad)
    assert any(re.search(r"labels\.csv:5: split 'trian' is not train, val or test", line) for line in bad)
    assert any(re.search(r"imgs/2\.png: not an image", line) for line in bad)


def test_a_checkpoint_mode_without_data_reads_its_csv_tables_with_their_columns(tmp_path):
    import argparse

    from config import use_checkpoint_data
    (tmp_path / "tables").mkdir()
    torch.save({"config": {"data": str(tmp_path / "tables"), "dataset": "csv", "path_col": "file",
                           "label_col": "cls"}}, tmp_path / "best.pth")
    cfg = argparse.Namespace(resume=str(tmp_path / "best.pth"), data="data/digits", dataset="folder",
                             path_col="path", label_col="label")
    use_checkpoint_data(cfg, given={"resume"})
    assert (cfg.data, cfg.dataset, cfg.path_col, cfg.label_col) == (str(tmp_path / "tables"), "csv", "file", "cls")
    cfg = argparse.Namespace(resume=str(tmp_path / "best.pth"), data="data/digits", dataset="csv",
                             path_col="path", label_col="species")
    use_checkpoint_data(cfg, given={"resume", "dataset", "label_col"})  # a column given on the command line wins
    assert (cfg.path_col, cfg.label_col) == ("file", "species")
