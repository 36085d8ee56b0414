"""Nothing outside what the user named is moved, mixed or overwritten (issue 25, item 3): check_images'
--move_bad_to and links, one file under two labels, predict folders, outputs of a loose checkpoint."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from dataloader.checking import check_dataset
from dataloader.datasets import ClassificationDataset, DatasetError
from dataloader.layout_writers import write_txt_lists, write_zip_archives
from helpers import ROOT


def snapshot(folder: Path) -> dict[str, tuple]:
    """Every entry under ``folder`` (links not followed) with its kind, size, mtime and link target."""
    entries = {}
    for path in [folder, *sorted(folder.rglob("*"))]:
        st = path.lstat()
        entries[str(path.relative_to(folder))] = (st.st_mode, st.st_size, st.st_mtime_ns,
                                                  os.readlink(path) if path.is_symlink() else None)
    return entries


def check_images(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "utils/check_images.py"), *args, "-j", "1", "--no_progress"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)


# ---- check_images --move_bad_to moves links, never their targets, and nothing outside the data ----

def test_move_bad_moves_a_symlink_itself_and_never_its_target_outside_the_data(tiny_data, tmp_path):
    data = shutil.copytree(tiny_data["folder"], tmp_path / "data")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious.png").write_bytes(b"not an image, but the user's own file")
    (data / "train" / "1" / "link.png").symlink_to(outside / "precious.png")  # absolute link
    (data / "train" / "7" / "rel.png").symlink_to(os.path.relpath(outside / "precious.png", data / "train" / "7"))
    (data / "train" / "0" / "bad.png").write_bytes(b"")  # a plain bad file: moved as before
    before = snapshot(outside)

    r = check_images(str(data), "--move_bad_to", str(tmp_path / "quarantine"))
    assert r.returncode == 1, r.stderr
    assert snapshot(outside) == before  # the target is still there, unchanged
    assert not os.path.lexists(data / "train" / "1" / "link.png") and not os.path.lexists(data / "train/7/rel.png")
    for moved in (tmp_path / "quarantine/train/1/link.png", tmp_path / "quarantine/train/7/rel.png"):
        assert moved.is_symlink() and moved.resolve() == (outside / "precious.png").resolve(), moved
    assert (tmp_path / "quarantine/train/0/bad.png").is_file() and not (data / "train/0/bad.png").exists()
    assert "moved " + str(outside) not in r.stdout


def test_move_bad_leaves_files_of_a_class_folder_linked_from_outside(tiny_data, tmp_path):
    data = shutil.copytree(tiny_data["folder"], tmp_path / "data")
    elsewhere = tmp_path / "other_disk" / "9"
    elsewhere.mkdir(parents=True)
    shutil.copy(next((data / "train" / "7").iterdir()), elsewhere / "good.png")
    (elsewhere / "broken.png").write_bytes(b"\x89PNG not really")
    (data / "train" / "9").symlink_to(elsewhere)  # a class linked from another disk: legitimate, read in place
    before = snapshot(tmp_path / "other_disk")

    r = check_images(str(data), "--move_bad_to", str(tmp_path / "quarantine"))
    assert r.returncode == 1, r.stderr
    assert snapshot(tmp_path / "other_disk") == before
    assert f"not moved {data}/train/9/broken.png: it lies outside the dataset" in r.stdout, r.stdout


def test_move_bad_never_replaces_a_file_already_in_the_quarantine(tiny_data, tmp_path):
    data = shutil.copytree(tiny_data["folder"], tmp_path / "data")
    (data / "train" / "0" / "bad.png").write_bytes(b"")
    earlier = tmp_path / "quarantine" / "train" / "0" / "bad.png"
    earlier.parent.mkdir(parents=True)
    earlier.write_bytes(b"moved by an earlier check")
    assert check_images(str(data), "--move_bad_to", str(tmp_path / "quarantine")).returncode == 1
    assert earlier.read_bytes() == b"moved by an earlier check"
    assert (earlier.parent / "bad.png.1").read_bytes() == b""


# ---- one file under two labels: reported by check_images, refused by the datasets ----

def _linked_class(data: Path) -> str:
    (data / "train" / "7dup").symlink_to("7")
    return "class folders .*/train/7 and .*/train/7dup are the same folder"


def _linked_file(data: Path) -> str:
    (data / "train" / "1" / "from0.png").symlink_to(next((data / "train" / "0").iterdir()).resolve())
    return r"classes '0' and '1' of .*/train share 1 file\(s\) \(e.g. .*/train/1/from0\.png is .*/train/0/"


@pytest.mark.parametrize("make", [_linked_class, _linked_file])
def test_two_classes_with_the_same_files_are_reported_and_refused(tiny_data, tmp_path, make):
    data = shutil.copytree(tiny_data["folder"], tmp_path / "data")
    pattern = make(data)
    r = check_images(str(data))
    assert r.returncode == 1 and "Traceback" not in r.stderr
    bad = [line for line in r.stdout.splitlines() if line.startswith("BAD") and "two labels" in line]
    assert len(bad) == 1 and re.search(pattern, bad[0]), r.stdout
    with pytest.raises(DatasetError, match=pattern + ".*under two labels"):
        ClassificationDataset(data, "folder", "train")


def test_a_class_linked_from_elsewhere_once_is_still_fine(tiny_data, tmp_path):
    data = shutil.copytree(tiny_data["folder"], tmp_path / "data")
    shutil.move(data / "train" / "7", tmp_path / "seven")
    (data / "train" / "7").symlink_to(tmp_path / "seven")
    assert len(ClassificationDataset(data, "folder", "train")) == 30
    assert all(f.status == "ok" for f in check_dataset(data))


def test_list_lines_naming_one_file_under_two_labels_are_reported_and_refused(tiny_data, tmp_path):
    txt = write_txt_lists(tiny_data["folder"], tmp_path / "txt")
    lines = (txt / "train.txt").read_text().splitlines()
    first = lines[0].rsplit(" ", 1)[0]
    os.symlink(Path(txt / first).resolve(), txt / "alias.png")  # the same file under another name
    (txt / "train.txt").write_text("\n".join(lines + [f"{first} 1", "alias.png 2"]) + "\n")
    with pytest.raises(DatasetError, match=r"train\.txt:31: .* \(label 1\) is also on line 1 \(label 0\): "
                                           r"the same images would train .*under two labels; keep one of the lines"):
        ClassificationDataset(txt, "txt", "train")
    findings = [f for f in check_dataset(txt) if "two labels" in f.reason]
    assert len(findings) == 2 and "alias.png' (label 2) is the same file as" in findings[1].reason

    zipped = write_zip_archives(tiny_data["folder"], tmp_path / "zip")
    rows = (zipped / "train_map.txt").read_text().splitlines()
    member = rows[0].rsplit("\t", 1)[0]
    (zipped / "train_map.txt").write_text("\n".join(rows + [f"{member}\t2"]) + "\n")
    with pytest.raises(DatasetError, match=rf"train_map\.txt:31: '{member}' \(label 2\) is also on line 1 \(label 0\)"):
        ClassificationDataset(zipped, "zip", "train")


# ---- --predict: a folder per run; outputs of a loose checkpoint under --output ----

@pytest.fixture(scope="module")
def checkpoint(tiny_data, tmp_path_factory):
    from helpers import calibrated_checkpoint
    return calibrated_checkpoint(tmp_path_factory.mktemp("outside") / "run", "resnet18", tiny_data["folder"], 16)


def predict_args(source: Path, checkpoint: Path, *extra: str) -> list[str]:
    return ["--predict", str(source), "--resume", str(checkpoint), "-j", "0", "--no_progress", "-v", "-s", *extra]


def written_sources(folder: Path) -> set[Path]:
    """The source folders of a predict folder's images, after checking that its CSV, log and annotated
    images name the same images (none of another run)."""
    import csv
    with open(folder / "predictions.csv", newline="") as f:
        rows = {Path(row["path"]) for row in csv.DictReader(f)}
    logged = {Path(line.split("\t")[0]) for line in (folder / "predictions.log").read_text().splitlines()}
    annotated = [p.stem.split("_", 1)[1] for p in (folder / "images").iterdir()]  # <index>_<stem>.png
    assert logged == rows and sorted(annotated) == sorted(p.stem for p in rows), folder
    return {p.parent for p in rows}


def test_each_predict_run_writes_a_folder_of_its_own(tiny_data, checkpoint, tmp_path):
    from helpers import run_main
    run = checkpoint.parent.parent
    sources = {}
    for name in ("0", "7"):
        sources[name] = shutil.copytree(tiny_data["folder"] / "test" / name, tmp_path / name / "pictures")
    assert run_main(predict_args(sources["0"], checkpoint)) == 0
    assert run_main(predict_args(sources["7"], checkpoint)) == 0  # same source name, other images
    assert run_main(predict_args(sources["7"], checkpoint)) == 0  # the same source again
    folders = sorted(p.name for p in (run / "predict").iterdir())
    assert folders == ["pictures", "pictures-2", "pictures-3"]
    assert [written_sources(run / "predict" / f) for f in folders] == [{sources["0"]}, {sources["7"]}, {sources["7"]}]


def test_a_loose_checkpoint_writes_under_output_and_nothing_beside_it(tiny_data, checkpoint, tmp_path):
    from helpers import run_main
    models, other = tmp_path / "models", tmp_path / "elsewhere"
    for folder in (models, other):
        folder.mkdir()
        shutil.copy(checkpoint, folder / "model.pth")
    (models / "log.txt").write_text("the user's own log\n")
    out = tmp_path / "out"
    taken = out / "resnet18" / "model"  # a training run of --tag model: not the loose checkpoint's
    (taken / "checkpoints").mkdir(parents=True)
    (taken / "config.yaml").write_text("arch: resnet18\ntag: model\ntrain: true\n")
    before = {folder: snapshot(folder) for folder in (models, other, taken)}

    evaluation = ["--evaluation", "--data", str(tiny_data["folder"]), "-j", "0", "--no_progress", "--output", str(out)]
    assert run_main(evaluation + ["--resume", str(models / "model.pth")]) == 0
    assert run_main(predict_args(tiny_data["folder"] / "test", models / "model.pth", "--output", str(out))) == 0
    assert run_main(evaluation + ["--resume", str(other / "model.pth")]) == 0  # same name, another file
    assert run_main(predict_args(tiny_data["folder"] / "test", models / "model.pth", "--output", str(out))) == 0

    assert {folder: snapshot(folder) for folder in (models, other, taken)} == before
    first, second = out / "resnet18" / "model-2", out / "resnet18" / "model-3"
    assert (first / "checkpoint.txt").read_text().strip() == str((models / "model.pth").resolve())
    assert (second / "checkpoint.txt").read_text().strip() == str((other / "model.pth").resolve())
    assert sorted(p.name for p in first.iterdir()) == ["checkpoint.txt", "eval_test", "log.txt", "predict"]
    assert sorted(p.name for p in (first / "predict").iterdir()) == ["test", "test-2"]
    assert sorted(p.name for p in second.iterdir()) == ["checkpoint.txt", "eval_test", "log.txt"]


def test_a_loose_checkpoints_folder_is_named_after_its_own_arch_and_a_bad_one_makes_none(tmp_path):
    import torch

    from applications.setup.common import checkpoint_run_dir
    from utils.checkpoint import CheckpointError
    (tmp_path / "models").mkdir()
    ckpt = tmp_path / "models" / "small.pth"
    torch.save({"model": {}, "model_spec": {"arch": "mobilenet_v3_small"}}, ckpt)
    assert checkpoint_run_dir(ckpt, tmp_path / "out", "resnet18") == tmp_path / "out" / "mobilenet_v3_small" / "small"
    torch.save({"fc.weight": torch.zeros(2, 2)}, tmp_path / "models" / "bare.pth")  # a bare state dict: --arch
    assert checkpoint_run_dir(tmp_path / "models" / "bare.pth", tmp_path / "out", "resnet18") == \
        tmp_path / "out" / "resnet18" / "bare"
    (tmp_path / "models" / "text.pth").write_text("not a checkpoint")
    with pytest.raises(CheckpointError):
        checkpoint_run_dir(tmp_path / "models" / "text.pth", tmp_path / "out", "resnet18")
    assert sorted(p.name for p in (tmp_path / "out").rglob("*")) == [
        "bare", "checkpoint.txt", "checkpoint.txt", "mobilenet_v3_small", "resnet18", "small"]
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == ["bare.pth", "small.pth", "text.pth"]
