"""dataloader/hf.py HfLayout (``--dataset hf``) and dataloader/convert.py: save_to_disk folders, Hub-layout parquet
and cached Hub names; column detection, class names from the ClassLabel, keys, readers in other processes,
the bad inputs (each one line), check_images on them, and the converter's registry and atomic output."""
from __future__ import annotations

import io
import os
import pickle
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image as PILImage

from dataloader import ClassificationDataset, Columns, DatasetError, ImageDecodeError, read_class_names
from dataloader.checking import check_dataset, detect_kind
from dataloader.convert import WRITERS, convert_dataset, write_parquet_split
from dataloader.datasets import get_layout, sample_key
from helpers import ROOT


@pytest.fixture(autouse=True)
def hf_cache(tmp_path, monkeypatch):
    """The datasets library's cache in tmp_path (the parquet builder prepares its arrow files there)."""
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf_datasets"))
    return tmp_path / "hf_datasets"


def png(value: int) -> bytes:
    buffer = io.BytesIO()
    PILImage.new("RGB", (4, 4), (value,) * 3).save(buffer, "PNG")
    return buffer.getvalue()


def hf_dataset(rows: dict, features: dict | None = None):
    """A datasets.Dataset of ``rows``; ``features``: column -> "image" | class names (a ClassLabel)."""
    from datasets import ClassLabel, Dataset, Features, Image, Value
    kinds = {"image": Image(), "binary": Value("binary"), "int": Value("int64"), "str": Value("string")}
    feats = Features({name: kinds[f] if isinstance(f, str) else ClassLabel(names=f) for name, f in features.items()})
    return Dataset.from_dict(rows, features=feats)


def saved(root: Path, splits: dict) -> Path:
    """``splits`` ({name: Dataset}) saved with save_to_disk at ``root``."""
    from datasets import DatasetDict
    DatasetDict(splits).save_to_disk(str(root))
    return root


def images(*values: int) -> list[dict]:
    return [{"bytes": png(v), "path": None} for v in values]


def one_line(match: str, error, fn, *args, **kwargs) -> str:
    with pytest.raises(error) as info:
        fn(*args, **kwargs)
    message = str(info.value)
    assert "\n" not in message and re.search(match, message), message
    return message


def test_save_to_disk_class_names_from_the_classlabel_keys_and_splits(tmp_path):
    train = hf_dataset({"img": images(10, 20, 30), "labels": [2, 0, 2]}, {"img": "image", "labels": ["b", "a", "c"]})
    val = hf_dataset({"img": images(40), "labels": [1]}, {"img": "image", "labels": ["b", "a", "c"]})
    root = saved(tmp_path / "sd", {"train": train, "validation": val})
    assert detect_kind(root) == "hf"
    assert read_class_names(root, "hf") == ["b", "a", "c"]  # the ClassLabel's order, not sorted
    ds = ClassificationDataset(root, "hf", "train")
    assert ds.targets == [2, 0, 2] and [ds.key(i) for i in range(3)] == ["train/000000", "train/000001", "train/000002"]
    assert ds[1][0][0, 0, 0].item() == 20 and ds[2][0][0, 0, 0].item() == 30
    assert ClassificationDataset(root, "hf", "val").targets == [1]  # "validation" is the val split
    assert sample_key(root, "hf", "val", "val/000000") == "val/000000"
    assert not get_layout("hf").exists(root, "test")


def test_a_single_dataset_is_train_and_integer_labels_take_classes_txt(tmp_path):
    root = tmp_path / "one"
    one = hf_dataset({"image": images(1, 2, 3), "label": [0, 1, 0]}, {"image": "image", "label": "int"})
    one.save_to_disk(str(root))
    assert read_class_names(root, "hf") == ["0", "1"]  # integers without classes.txt: 0..K-1
    (root / "classes.txt").write_text("cat\ndog\n")
    assert read_class_names(root, "hf") == ["cat", "dog"]
    assert ClassificationDataset(root, "hf", "train").targets == [0, 1, 0]
    assert not get_layout("hf").exists(root, "val")


def test_column_detection_and_the_flags(tmp_path):
    data = {"picture": [png(5), png(6)], "cls": [0, 1], "label": [1, 1]}
    root = saved(tmp_path / "sd", {"train": hf_dataset(data, {"picture": "binary", "cls": ["x", "y"], "label": "int"})})
    one_line(r"\(train split\): no image column \('image' or 'img'\); its columns are picture, cls, label: name the "
             r"image column with --image_col$", DatasetError, read_class_names, root, "hf")
    cols = Columns(label="cls", image="picture")
    assert read_class_names(root, "hf", cols) == ["x", "y"]
    assert ClassificationDataset(root, "hf", "train", columns=cols)[1][0][0, 0, 0].item() == 6  # a binary column
    one_line(r"no column 'labelz'; its columns are picture, cls, label: name the label column with --label_col$",
             DatasetError, read_class_names, root, "hf", Columns(label="labelz", image="picture"))
    one_line(r"column 'cls' holds ClassLabel.*not images", DatasetError, read_class_names, root, "hf",
             Columns(image="cls"))


def test_a_column_named_by_a_flag_never_falls_back_to_a_default(tmp_path):
    """Only the default detection picks ``labels`` (``img``) when ``label`` (``image``) is absent: a column named
    by --label_col / --image_col is that column or one error naming the columns there are, even when the name
    given is a default one; csv tables read ``label`` when --label_col is not given."""
    root = saved(tmp_path / "sd", {"train": hf_dataset({"img": images(1, 2), "labels": [1, 0]},
                                                       {"img": "image", "labels": ["a", "b"]})})
    assert read_class_names(root, "hf") == ["a", "b"] and read_class_names(root, "hf", Columns()) == ["a", "b"]
    assert ClassificationDataset(root, "hf", "train", columns=Columns(label="labels", image="img")).targets == [1, 0]
    for columns, flag in ((Columns(label="label"), "label"), (Columns(image="image"), "image")):
        one_line(rf"sd \(train split\): no column '{flag}'; its columns are img, labels: name the {flag} column with "
                 rf"--{flag}_col$", DatasetError, read_class_names, root, "hf", columns)
    assert get_layout("csv", Columns(path="file")).columns == Columns(path="file", label="label")
    import config  # the flag reaches the layout as given, the default as None (detect)
    from applications.setup.common import data_columns
    assert data_columns(config.parse_config(["--train", "--dataset", "hf", "--data", str(root)])) == Columns()
    given = config.parse_config(["--train", "--dataset", "hf", "--data", str(root), "--label_col", "label"])
    one_line(r"no column 'label'; its columns are img, labels", DatasetError, read_class_names, root, "hf",
             data_columns(given))


def test_string_labels_and_a_label_gap_are_errors(tmp_path):
    root = saved(tmp_path / "s", {"train": hf_dataset({"image": images(1), "label": ["cat"]},
                                                      {"image": "image", "label": "str"})})
    one_line(r"the labels are Value\('string'.*neither a ClassLabel nor integers: cast the column with "
             r"dataset\.class_encode_column", DatasetError, read_class_names, root, "hf")
    root = saved(tmp_path / "g", {"train": hf_dataset({"image": images(1, 2), "label": [0, 2]},
                                                      {"image": "image", "label": "int"})})
    one_line(r"no row has label 1 although label 2 exists.*add \S*classes\.txt", DatasetError,
             read_class_names, root, "hf")


def test_a_label_out_of_the_classlabel_range_and_an_undecodable_row(tmp_path):
    rows = {"image": images(1, 2) + [{"bytes": b"not an image", "path": None}], "label": [0, 1, 0]}
    train = hf_dataset(rows, {"image": "image", "label": ["a", "b"]})
    test = hf_dataset({"image": images(3), "label": [5]}, {"image": "image", "label": "int"})
    root = saved(tmp_path / "sd", {"train": train, "test": test})
    one_line(r"sd \(test split\) row 0: label 5 is out of range: there are 2 classes \(labels 0\.\.1\)", DatasetError,
             ClassificationDataset, root, "hf", "test")
    ds = ClassificationDataset(root, "hf", "train")
    one_line(r"sd \(train split\) row 2: .*--skip_bad_images", ImageDecodeError, ds.__getitem__, 2)
    assert ClassificationDataset(root, "hf", "train", skip_bad=True)[2] is None
    findings = {f.source: f for f in check_dataset(root, workers=2)}
    assert findings[f"{root} (train split) row 2"].status == "bad"
    assert [f.status for f in findings.values()].count("ok") == 2
    assert any("label 5 is out of range" in f.reason for f in findings.values())


def test_parquet_in_the_hub_layout_and_readers_in_worker_processes(tmp_path, hf_cache):
    folder = tmp_path / "pq" / "data"
    folder.mkdir(parents=True)
    for split, values in (("train", (10, 20, 30, 40)), ("validation", (50,))):
        hf_dataset({"image": images(*values), "label": [0, 1, 0, 1][:len(values)]},
                   {"image": "image", "label": ["a", "b"]}).to_parquet(str(folder / f"{split}-00000-of-00001.parquet"))
    root = tmp_path / "pq"
    assert detect_kind(root) == "hf" and read_class_names(root, "hf") == ["a", "b"]
    ds = ClassificationDataset(root, "hf", "train")
    assert len(pickle.dumps(ds.reader)) < 1000  # file names, not the table
    loader = torch.utils.data.DataLoader(ds, batch_size=2, num_workers=2)
    firsts = [int(image[0, 0, 0]) for batch in loader for image in batch[0]]
    assert firsts == [10, 20, 30, 40]
    assert any(hf_cache.rglob("*.arrow"))  # prepared once into the datasets cache, as load_dataset does


def test_a_hub_name_reads_the_cache_and_never_downloads(tmp_path, hf_cache):
    one_line(rf"Hugging Face dataset 'someone/absent' is not in the datasets cache {re.escape(str(hf_cache))} and "
             r"this project never downloads data.*datasets\.load_dataset\('someone/absent'\)", DatasetError,
             read_class_names, "someone/absent", "hf")
    one_line(r"'no such/folder!' is neither a folder nor a Hugging Face dataset name", DatasetError,
             read_class_names, "no such/folder!", "hf")
    # a dataset loaded once is cached as <cache>/<user>___<name>/<config>/<version>/<hash>/<name>-<split>.arrow:
    # the library prepares one (from parquet files, offline) and it is moved where a Hub download would be
    from datasets import load_dataset
    parquet = tmp_path / "train-00000-of-00001.parquet"
    two = hf_dataset({"image": images(7, 8), "label": [1, 0]}, {"image": "image", "label": ["p", "q"]})
    two.to_parquet(str(parquet))
    prepared = load_dataset("parquet", data_files={"train": str(parquet)}, cache_dir=str(tmp_path / "c"))["train"]
    arrow = Path(prepared.cache_files[0]["filename"])
    cached = hf_cache / "someone___digits" / "default" / "0.0.0" / "abc123"
    cached.mkdir(parents=True)
    shutil.copy(arrow, cached / "digits-train.arrow")
    shutil.copy(arrow.parent / "dataset_info.json", cached / "dataset_info.json")
    assert read_class_names("someone/digits", "hf") == ["p", "q"]
    assert ClassificationDataset("someone/digits", "hf", "train")[0][0][0, 0, 0].item() == 7


def test_the_writer_registry_and_the_parquet_files(tmp_path, tiny_data):
    assert WRITERS["parquet"] is write_parquet_split
    out = convert_dataset(tiny_data["folder"], "folder", "parquet", tmp_path / "pq", jobs=2)
    assert sorted(p.name for p in (out / "data").iterdir()) == [
        "test-00000-of-00001.parquet", "train-00000-of-00001.parquet", "validation-00000-of-00001.parquet"]
    from datasets import load_dataset  # the library reads our files back, ClassLabel and keys (as paths) included
    back = load_dataset("parquet", data_files=str(out / "data" / "train-*.parquet"), split="train",
                        cache_dir=str(tmp_path / "c"))
    assert back.features["label"].names == ["0", "1", "7"] and back[0]["image"].size == (16, 16)
    assert back.with_format("arrow")[:1]["image"][0]["path"].as_py() == "train/0/0000.png"
    one_line(r"pq already exists: choose another --out, or remove it first", DatasetError, convert_dataset,
             tiny_data["folder"], "folder", "parquet", out)


def test_parquet_files_are_written_in_parallel_with_the_same_bytes(tmp_path, tiny_data, monkeypatch):
    """Files of at most ~1 KB (several per split), written 1 and 2 at a time: the same files byte for byte, and
    read back with pyarrow they hold every sample of the source in its order (key, bytes, label)."""
    import pyarrow.parquet as pq

    from dataloader import convert
    monkeypatch.setattr(convert, "PARQUET_MAX_FILE_BYTES", 1024)
    root = tiny_data["folder"]
    one = convert_dataset(root, "folder", "parquet", tmp_path / "one", jobs=1)
    two = convert_dataset(root, "folder", "parquet", tmp_path / "two", jobs=2)
    names = sorted(p.name for p in (one / "data").iterdir())
    assert names == sorted(p.name for p in (two / "data").iterdir()) and len(names) > 6
    assert all((one / "data" / n).read_bytes() == (two / "data" / n).read_bytes() for n in names)
    layout = get_layout("folder")
    classes = layout.classes(root)
    samples = layout.samples(root, "train", classes)
    files = sorted((two / "data").glob("train-*.parquet"))
    assert files[-1].name.endswith(f"-of-{len(files):05d}.parquet") and len(files) > 2
    rows = [row for f in files for row in pq.read_table(f).to_pylist()]
    assert [(r["image"]["path"], r["image"]["bytes"], r["label"]) for r in rows] == [
        (sample_key(root, "folder", "train", source), Path(source).read_bytes(), label) for source, label in samples]
    # at most PARQUET_MAX_WRITERS files in flight whatever -j (each may hold 512 MB), and they do overlap
    import threading
    import time
    active, peak, lock, write = [0], [0], threading.Lock(), convert._write_parquet

    def counted(*args):
        with lock:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
        time.sleep(0.02)
        try:
            return write(*args)
        finally:
            with lock:
                active[0] -= 1
    monkeypatch.setattr(convert, "_write_parquet", counted)
    eight = convert_dataset(root, "folder", "parquet", tmp_path / "eight", jobs=8)
    assert peak[0] == convert.PARQUET_MAX_WRITERS == 2
    assert all((one / "data" / n).read_bytes() == (eight / "data" / n).read_bytes() for n in names)


def test_a_failed_conversion_leaves_nothing(tmp_path, tiny_data, monkeypatch):
    src = tiny_data["folder"]

    def failing(out_dir, split, records, class_names, jobs):
        for i, _ in enumerate(records):
            if i == 3:
                raise KeyboardInterrupt  # a kill in the middle of a split
        (out_dir / f"{split}.done").write_text("")

    monkeypatch.setitem(WRITERS, "parquet", failing)
    with pytest.raises(KeyboardInterrupt):
        convert_dataset(src, "folder", "parquet", tmp_path / "out")
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out*"))  # nor the temporary folder


def test_convert_data_cli(tmp_path, tiny_data):
    r = subprocess.run([sys.executable, "utils/convert_data.py", "--data", str(tiny_data["zip"]), "--to", "parquet",
                        "--out", str(tmp_path / "pq"), "-j", "2", "--no_progress"], cwd=ROOT, capture_output=True,
                       text=True, env={**os.environ, "HF_DATASETS_CACHE": str(tmp_path / "c")})
    assert r.returncode == 0, r.stderr
    zipped = ClassificationDataset(tiny_data["zip"], "zip", "train")
    converted = ClassificationDataset(tmp_path / "pq", "hf", "train")
    assert converted.targets == zipped.targets
    assert all(torch.equal(converted.load(i), zipped.load(i)) for i in range(len(zipped)))
    assert [converted.reader(s) for s, _ in converted.samples[:2]] == [zipped.reader(s) for s, _ in zipped.samples[:2]]
    r = subprocess.run([sys.executable, "utils/convert_data.py", "--data", str(tiny_data["folder"]), "--to", "parquet",
                        "--out", str(tmp_path / "pq")], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [f"error: {tmp_path / 'pq'} already exists: choose "
                                                                    f"another --out, or remove it first"]


def test_a_file_the_library_cannot_read_and_a_folder_without_a_dataset(tmp_path):
    (tmp_path / "bad" / "data").mkdir(parents=True)
    (tmp_path / "bad" / "data" / "train-00000-of-00001.parquet").write_text("not a parquet file")
    one_line(r"bad: the datasets library cannot read it \(ArrowInvalid: Parquet magic bytes not found.*check the files "
             r"\(python utils/check_images\.py \S*bad\)$", DatasetError, read_class_names, tmp_path / "bad", "hf")
    (tmp_path / "empty").mkdir()
    one_line(r"empty holds no Hugging Face dataset: --dataset hf reads a save_to_disk folder", DatasetError,
             read_class_names, tmp_path / "empty", "hf")


def multi(**flags) -> Columns:
    from dataloader.labels import LabelSets
    return Columns(sets=LabelSets(allow_empty=flags.get("allow_empty", False)))


def test_a_sequence_of_classlabel_is_read_as_label_sets_with_multi_label(tmp_path):
    from datasets import ClassLabel, Dataset, Features, Image, Sequence
    feats = Features({"image": Image(), "labels": Sequence(ClassLabel(names=["cat", "dog", "owl"]))})
    train = Dataset.from_dict({"image": images(1, 2, 3), "labels": [[2, 0], [1], [0, 1, 2]]}, features=feats)
    val = Dataset.from_dict({"image": images(4), "labels": [[]]}, features=feats)
    root = saved(tmp_path / "sd", {"train": train, "validation": val})
    assert read_class_names(root, "hf", multi()) == ["cat", "dog", "owl"]
    ds = ClassificationDataset(root, "hf", "train", columns=multi())
    assert ds.multi_label and ds.targets == [(0, 2), (1,), (0, 1, 2)]
    assert ds[0][1].tolist() == [1.0, 0.0, 1.0] and ds[0][1].dtype == torch.float32  # multi-hot K
    one_line(r"sd \(train split\): the label column 'labels' holds a list of labels per row .*add --multi_label$",
             DatasetError, read_class_names, root, "hf")
    one_line(r"sd \(val split\) row 0 \(val/000000\): no label: .*--allow_empty_labels", DatasetError,
             ClassificationDataset, root, "hf", "val", columns=multi())
    assert ClassificationDataset(root, "hf", "val", columns=multi(allow_empty=True)).targets == [()]
    single = saved(tmp_path / "one", {"train": hf_dataset({"image": images(1), "label": [0]},
                                                          {"image": "image", "label": ["a"]})})
    one_line(r"--multi_label reads a list of labels per row, but the label column 'label' holds one label",
             DatasetError, read_class_names, single, "hf", multi())


def test_plain_integer_and_string_lists_name_their_classes(tmp_path):
    from datasets import Dataset
    ints = Dataset.from_dict({"image": images(1, 2), "label": [[3, 1], [0, 2]]}).cast_column("image", _image())
    root = saved(tmp_path / "ints", {"train": ints, "test": Dataset.from_dict(
        {"image": images(3), "label": [[1, 7]]}).cast_column("image", _image())})
    assert read_class_names(root, "hf", multi()) == ["0", "1", "2", "3"]  # 0..K-1, as an integer column
    assert ClassificationDataset(root, "hf", "train", columns=multi()).targets == [(1, 3), (0, 2)]
    one_line(r"ints \(test split\) row 0 \(test/000000\): label 7 is not a class \(4 classes: 0\.\.3\)",
             DatasetError, ClassificationDataset, root, "hf", "test", columns=multi())
    names = Dataset.from_dict({"image": images(1, 2), "label": [["owl", "cat"], ["dog"]]}).cast_column("image",
                                                                                                        _image())
    root = saved(tmp_path / "names", {"train": names, "validation": Dataset.from_dict(
        {"image": images(3), "label": [["cow"]]}).cast_column("image", _image())})
    assert read_class_names(root, "hf", multi()) == ["cat", "dog", "owl"]  # the sorted union over train
    assert ClassificationDataset(root, "hf", "train", columns=multi()).targets == [(0, 2), (1,)]
    one_line(r"\(val/000000\): label 'cow' is not a class \(3 classes: a name among train's labels\)",
             DatasetError, ClassificationDataset, root, "hf", "val", columns=multi())


def _image():
    from datasets import Image
    return Image()


def multi_label_csv(root: Path) -> Path:
    """A tiny csv set with label sets (names, one space apart; one image without labels in val)."""
    sets = {"train": ["cat dog", "owl", "cat owl dog", "dog", "cat", "owl dog"], "val": ["dog owl", "", "cat"]}
    for split, labels in sets.items():
        (root / split).mkdir(parents=True)
        rows = ["path,label"]
        for i, label in enumerate(labels):
            (root / split / f"{i}.png").write_bytes(png(10 * i + len(split)))
            rows.append(f"{split}/{i}.png,{label}")
        (root / f"{split}.csv").write_text("\n".join(rows) + "\n")
    return root


def test_convert_keeps_label_sets_csv_to_parquet_and_to_shards(tmp_path):
    from dataloader.labels import LabelSets
    from dataloader.shards import ShardDataset
    src, columns = multi_label_csv(tmp_path / "csv"), multi(allow_empty=True)
    convert_dataset(src, "csv", "parquet", tmp_path / "pq", columns=columns)
    convert_dataset(src, "csv", "wds", tmp_path / "wds", columns=columns)
    assert read_class_names(tmp_path / "pq", "hf", columns) == ["cat", "dog", "owl"]  # the Sequence(ClassLabel)'s
    for split in ("train", "val"):
        original = ClassificationDataset(src, "csv", split, columns=columns)
        parquet = ClassificationDataset(tmp_path / "pq", "hf", split, columns=columns)
        assert parquet.targets == original.targets and (split == "train" or () in parquet.targets)
        assert all(torch.equal(parquet.load(i), original.load(i)) for i in range(len(original)))
        shards = ShardDataset(tmp_path / "wds", split, sets=LabelSets(allow_empty=True))
        by_key = {key.split("/", 1)[1]: label for key, label in shards.samples}  # shards hold a shuffled order
        assert {original.key(i).replace(".", "_"): t for i, t in enumerate(original.targets)} == by_key
    one_line(r"the label column 'label' holds a list of labels per row .*add --multi_label", DatasetError,
             read_class_names, tmp_path / "pq", "hf")
    findings = check_dataset(tmp_path / "pq", "hf", columns=columns)  # check_images --multi_label
    assert [f.status for f in findings] == ["ok"] * 9 and findings[0].label == "cat dog"


def test_convert_data_cli_with_multi_label(tmp_path, capsys):
    from utils.convert_data import main  # in this process: the flags reach the layout
    src = multi_label_csv(tmp_path / "csv")
    base = ["--data", str(src), "--to", "parquet", "-j", "1", "--no_progress"]
    assert main(base + ["--out", str(tmp_path / "no"), "--multi_label"]) == 2  # the empty label set of val/1.png
    assert re.fullmatch(r"error: \S*val\.csv:3: no label: .*--allow_empty_labels.*\n", capsys.readouterr().err)
    assert main(base + ["--out", str(tmp_path / "pq"), "--multi_label", "--allow_empty_labels"]) == 0
    assert ClassificationDataset(tmp_path / "pq", "hf", "val", columns=multi(allow_empty=True)).targets == \
        [(1, 2), (), (0,)]
