"""applications/predict.py: folders, txt lists and single images; class names, annotations, unreadable files."""
from __future__ import annotations

import contextlib
import csv
import io
import json
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image

from helpers import calibrated_checkpoint, read_json, run_main
from utils.checkpoint import load_checkpoint


def main_result(args: list[str]) -> dict:
    """Run main.py and return the result it prints."""
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert run_main(args) == 0
    return json.loads(buf.getvalue())


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def checkpoint(tiny_data, tmp_path_factory):
    run = tmp_path_factory.mktemp("predict") / "run"
    return calibrated_checkpoint(run, "resnet18", tiny_data["folder"], 16)


def test_predict_a_folder_matches_evaluation_and_counts_unreadable_images(tiny_data, checkpoint, tmp_path, caplog):
    source = tmp_path / "images"
    shutil.copytree(tiny_data["folder"] / "test", source)  # nested class folders: searched recursively
    (source / "7" / "deeper").mkdir()
    (source / "7" / "deeper" / "broken.png").write_bytes(b"\x89PNG not really")
    (source / "empty.jpg").write_bytes(b"")
    (source / "notes.txt").write_text("not an image extension: ignored")
    result = main_result(["--predict", str(source), "--resume", str(checkpoint), "--topk", "2", "-j", "0",
                          "-b", "5", "--no_progress"])
    run = checkpoint.parent.parent
    assert result["images"] == 14 and result["predicted"] == 12 and result["unreadable"] == 2
    assert result["predictions"] == str(run / "predict" / "images" / "predictions.csv")  # named after the source
    assert "skipped unreadable image" in caplog.text and "broken.png" in caplog.text and "empty.jpg" in caplog.text
    rows = read_csv(run / "predict" / "images" / "predictions.csv")
    assert list(rows[0]) == ["path", "class_1", "prob_1", "class_2", "prob_2"]
    assert len(rows) == 12

    assert run_main(["--evaluation", "--resume", str(checkpoint), "--data", str(tiny_data["folder"]), "-j", "0",
                     "--no_progress", "--out", str(tmp_path / "preds.json")]) == 0
    expected = {Path(p["path"]).relative_to(tiny_data["folder"] / "test"): p
                for p in read_json(tmp_path / "preds.json")}
    assert len({p["prediction"] for p in expected.values()}) > 1
    for row in rows:
        p = expected[Path(row["path"]).relative_to(source)]
        assert row["class_1"] == p["prediction_name"]
        assert float(row["prob_1"]) == pytest.approx(max(p["scores"]), abs=2e-6)
        assert float(row["prob_1"]) >= float(row["prob_2"])


def test_predict_a_txt_list_with_class_indices_visualize_and_log(tiny_data, checkpoint, tmp_path):
    # A bare state dict carries no class names and no config: --arch/--image_size and --class_indices say them.
    bare = tmp_path / "bare.pth"
    torch.save(load_checkpoint(checkpoint)["model"], bare)
    images = sorted((tiny_data["folder"] / "test").rglob("*.png"))[:3]
    listing = tmp_path / "lists" / "images.txt"
    listing.parent.mkdir()
    shutil.copy(images[0], listing.parent / "local.png")
    listing.write_text(f"# a comment\nlocal.png\n{images[1]} 2\n\n{images[2]}\nmissing.png 0\n")
    args = ["--predict", str(listing), "--resume", str(bare), "--arch", "resnet18", "--image_size", "16", "16",
            "-j", "0", "--no_progress", "-v", "-s", "--topk", "5", "--output", str(tmp_path / "out")]
    assert run_main(args) == 1  # no class names anywhere: a clear error, no crash

    indices = tmp_path / "classes.json"
    indices.write_text(json.dumps({"0": "zero", "1": "one", "2": "seven"}))
    result = main_result(args + ["--class_indices", str(indices)])
    out = tmp_path / "out" / "resnet18" / "bare" / "predict" / "images"  # a loose checkpoint: <output>/<arch>/<stem>
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bare.pth", "classes.json", "lists", "out"]
    assert result["images"] == 4 and result["predicted"] == 3 and result["unreadable"] == 1
    rows = read_csv(out / "predictions.csv")
    assert [Path(r["path"]).name for r in rows] == ["local.png", images[1].name, images[2].name]
    assert list(rows[0])[-2:] == ["class_3", "prob_3"]  # --topk 5 capped at the 3 classes
    for row in rows:
        assert {row["class_1"], row["class_2"], row["class_3"]} == {"zero", "one", "seven"}
        assert sum(float(row[f"prob_{k}"]) for k in (1, 2, 3)) == pytest.approx(1.0, abs=1e-5)
    annotated = sorted((out / "images").iterdir())
    assert len(annotated) == 3 and all(p.suffix == ".png" for p in annotated)
    with Image.open(annotated[0]) as im:
        assert im.width >= 256 and im.height > im.width  # blown up, with the text band under the image
    log = (out / "predictions.log").read_text().splitlines()
    assert len(log) == 4 and log[-1].startswith(str(listing.parent / "missing.png")) and "UNREADABLE" in log[-1]


def test_predict_one_image_with_a_bce_head(tiny_data, tmp_path):
    ckpt = calibrated_checkpoint(tmp_path / "run", "resnet18", tiny_data["folder"], 16, criterion="bce")
    image = sorted((tiny_data["folder"] / "test").rglob("*.png"))[0]
    result = main_result(["--predict", str(image), "--resume", str(ckpt), "-j", "0", "--no_progress", "--topk", "1"])
    assert result["predicted"] == 1 and result["unreadable"] == 0
    (row,) = read_csv(Path(result["predictions"]))
    assert list(row) == ["path", "class_1", "prob_1"] and row["class_1"] in ("0", "1", "7")
    assert 0 < float(row["prob_1"]) < 1


def test_class_indices_formats(tmp_path):
    from utils.class_indices import read_class_indices
    cases = {"list.json": ["cat", "dog"], "map.json": {"1": "dog", "0": "cat"},
             "keras.json": {"0": ["n0001", "cat"], "1": ["n0002", "dog"]}}
    for name, content in cases.items():
        (tmp_path / name).write_text(json.dumps(content))
        assert read_class_indices(tmp_path / name) == ["cat", "dog"], name
    (tmp_path / "gap.json").write_text(json.dumps({"0": "cat", "2": "dog"}))
    with pytest.raises(ValueError, match="keys must be exactly 0..1"):
        read_class_indices(tmp_path / "gap.json")


def test_predict_with_no_readable_image_is_an_error_and_leaves_no_folder(tiny_data, checkpoint, tmp_path, caplog):
    run = checkpoint.parent.parent
    main_result(["--predict", str(tiny_data["folder"] / "test" / "7"), "--resume", str(checkpoint), "-j", "0",
                 "--no_progress"])
    before = sorted(p.name for p in (run / "predict").iterdir())
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "a.png").write_bytes(b"\x89PNG not really")
    (broken / "b.jpg").write_bytes(b"")
    assert run_main(["--predict", str(broken), "--resume", str(checkpoint), "-j", "0", "--no_progress"]) == 1
    assert "none of the 2 images" in caplog.text and "nothing was written" in caplog.text
    assert sorted(p.name for p in (run / "predict").iterdir()) == before and "broken" not in before


def test_predict_every_row_of_a_hugging_face_dataset(tiny_data, checkpoint, tmp_path, monkeypatch, capsys, caplog):
    """``--predict DIR`` on a save_to_disk dataset: every row of train, val and test, unlabelled ones too (a test
    split without a label column, as Kaggle-style sets have), named ``<split>/<row>``, predicted as the same
    images given as files are; a row without an image is counted unreadable; a Hub name is read only with
    --dataset hf (here not cached: one line)."""
    from datasets import Dataset, DatasetDict, Features, Value
    from datasets import Image as HfImage
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "cache"))
    files = sorted((tiny_data["folder"] / "test").glob("*/*.png"))[:5]
    images = [{"bytes": f.read_bytes(), "path": None} for f in files]
    features = Features({"img": HfImage(), "labels": Value("int64")})
    DatasetDict({"train": Dataset.from_dict({"img": images[:2], "labels": [0, 1]}, features=features),
                 "test": Dataset.from_dict({"img": [*images[2:], None]}, features=Features({"img": HfImage()}))}
                ).save_to_disk(str(tmp_path / "sd"))
    common = ["--resume", str(checkpoint), "--topk", "2", "-j", "0", "--no_progress"]
    result = main_result(["--predict", str(tmp_path / "sd"), *common, "-s"])
    assert (result["images"], result["predicted"], result["unreadable"]) == (6, 5, 1)
    rows = read_csv(Path(result["predictions"]))
    assert [row["path"] for row in rows] == ["train/000000", "train/000001", "test/000000", "test/000001",
                                             "test/000002"]
    assert Path(result["log"]).read_text().splitlines()[-1].startswith("test/000003\tUNREADABLE: ")
    (tmp_path / "files.txt").write_text("".join(f"{f}\n" for f in files))
    twins = read_csv(Path(main_result(["--predict", str(tmp_path / "files.txt"), *common])["predictions"]))
    for row, twin in zip(rows, twins, strict=True):
        assert (row["class_1"], row["class_2"]) == (twin["class_1"], twin["class_2"])
        assert abs(float(row["prob_1"]) - float(twin["prob_1"])) <= 2e-6
    # a dataset of a test split alone: predicted (train is needed only to train, for the class names)
    DatasetDict({"test": Dataset.from_dict({"img": images[2:]}, features=Features({"img": HfImage()}))}
                ).save_to_disk(str(tmp_path / "only_test"))
    only = read_csv(Path(main_result(["--predict", str(tmp_path / "only_test"), *common])["predictions"]))
    assert [(row["path"], row["class_1"]) for row in only] == [("test/000000", rows[2]["class_1"]),
                                                              ("test/000001", rows[3]["class_1"]),
                                                              ("test/000002", rows[4]["class_1"])]
    from dataloader import DatasetError, read_class_names
    with pytest.raises(DatasetError, match=r"only_test has no train split \(its splits: test\): the class names"):
        read_class_names(tmp_path / "only_test", "hf")
    capsys.readouterr()
    assert run_main(["--predict", "someone/absent", *common]) == 2
    assert "--predict: 'someone/absent' does not exist" in capsys.readouterr().err
    assert run_main(["--predict", "someone/absent", "--dataset", "hf", *common]) == 1
    assert "DatasetError: Hugging Face dataset 'someone/absent' is not in the datasets cache" in caplog.text
