"""One atomic-write helper, one image-folder walker, one SourceImages."""
from __future__ import annotations

import argparse
import ast
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import ROOT
from utils.atomic import atomic_path, atomic_write, temp_path, write_json_atomic
from utils.checkpoint import load_checkpoint, previous_path, save_checkpoint
from utils.sidefiles import write_rows


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".tmp" in p.name)


# ------------------------------------------------------------------------------------------ atomic writes
@pytest.mark.parametrize("error", [RuntimeError("writer failed"), KeyboardInterrupt()])
def test_atomic_write_keeps_the_old_file_and_no_temporary_when_the_writer_raises(tmp_path, error):
    path = tmp_path / "metrics.json"
    path.write_text("old")
    with pytest.raises(type(error)):
        with atomic_write(path) as f:
            f.write("half of the new")
            raise error
    assert path.read_text() == "old" and leftovers(tmp_path) == []
    with pytest.raises(type(error)):
        with atomic_path(tmp_path / "model.onnx") as tmp:
            tmp.write_bytes(b"half")
            raise error
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json"]


def test_atomic_write_replaces_creates_folders_and_keeps_a_previous_copy(tmp_path):
    path = tmp_path / "new" / "folder" / "a.json"
    assert write_json_atomic(path, {"x": 1}) == path and path.read_text() == '{\n  "x": 1\n}'
    with atomic_write(path, previous=path.with_name("a.json.prev")) as f:
        f.write("second")
    assert path.read_text() == "second" and path.with_name("a.json.prev").read_text() == '{\n  "x": 1\n}'
    assert temp_path(path).name == f".a.json.tmp-{os.getpid()}" and leftovers(path.parent) == []
    with pytest.raises(ValueError, match="mode must be 'w' or 'wb'"):
        with atomic_write(path, "a"):
            pass


@pytest.mark.parametrize("hard_links", [True, False])
def test_a_signal_right_after_the_backup_leaves_the_old_file_at_both_names(tmp_path, monkeypatch, hard_links):
    """A SIGTERM that lands once the previous copy is in place, before the new file is renamed over
    ``path`` (a training run stopped mid-save; it lost last.pth when the backup was a move): ``path``
    still holds the old file, and so does the backup. The same where the file system has no hard links."""
    path, prev = tmp_path / "last.pth", tmp_path / "last.pth.prev"
    save_checkpoint({"epoch": torch.tensor(1)}, path)
    real_replace = os.replace

    def replace_then_signal(src, dst):
        real_replace(src, dst)
        if Path(dst) == prev:
            raise KeyboardInterrupt  # what InterruptOnSignals raises for a SIGTERM
    monkeypatch.setattr(os, "replace", replace_then_signal)
    if not hard_links:
        monkeypatch.setattr(os, "link", lambda *a: (_ for _ in ()).throw(OSError(1, "Operation not permitted")))
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint({"epoch": torch.tensor(2)}, path, keep_previous=True)
    monkeypatch.undo()
    assert int(load_checkpoint(path)["epoch"]) == 1 and int(load_checkpoint(prev)["epoch"]) == 1
    assert leftovers(tmp_path) == []
    save_checkpoint({"epoch": torch.tensor(3)}, path, keep_previous=True)  # the next save: new file, old kept
    assert int(load_checkpoint(path)["epoch"]) == 3 and int(load_checkpoint(prev)["epoch"]) == 1
    assert path.stat().st_ino != prev.stat().st_ino


def test_side_file_writer_failing_midway_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "distill.txt"
    write_rows(path, [("a.png", [0.5, 0.5])], overwrite=False)

    def rows():
        yield "b.png", [0.25, 0.75]
        raise KeyboardInterrupt  # Ctrl-C while the rows are computed

    with pytest.raises(KeyboardInterrupt):
        write_rows(path, rows(), overwrite=True)
    assert path.read_text() == "a.png,0.5,0.5\n" and leftovers(tmp_path) == []


def test_checkpoint_save_keeps_its_previous_copy_and_the_old_file_when_it_fails(tmp_path):
    path = tmp_path / "last.pth"
    save_checkpoint({"epoch": torch.tensor(1)}, path)
    save_checkpoint({"epoch": torch.tensor(2)}, path, keep_previous=True)
    assert int(load_checkpoint(path)["epoch"]) == 2 and int(load_checkpoint(previous_path(path))["epoch"]) == 1
    assert leftovers(tmp_path) == []
    with pytest.raises(Exception, match="lambda"):
        save_checkpoint({"epoch": torch.tensor(3), "bad": lambda: 0}, path)  # cannot be pickled: fails mid-write
    assert int(load_checkpoint(path)["epoch"]) == 2 and leftovers(tmp_path) == []


def test_temporaries_of_dead_writers_go_those_of_live_ones_stay(tmp_path):
    """What killed exports leave (a temporary file, a scratch folder) goes on the next export into the folder;
    a running writer's (another process's, this one's) stays, and a link named like one is never followed."""
    import subprocess
    import sys

    from utils.atomic import remove_stale_temporaries, temp_dir, temp_owner
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text("mine")
    export = tmp_path / "export"
    with temp_dir(export / "model.int8.onnx.unverified") as scratch:  # made in the export folder, named for it
        assert scratch.parent == export and scratch.name.startswith(f".model.int8.onnx.unverified.tmp-{os.getpid()}-")
        assert temp_owner(scratch) == os.getpid()
    assert not scratch.exists()
    try:
        (export / f".model.onnx.unverified.tmp-{dead_pid}").write_bytes(b"half an onnx file")
        (export / f".model.int8.onnx.unverified.tmp-{dead_pid}-abc123").mkdir()
        (export / f".model.int8.onnx.unverified.tmp-{dead_pid}-abc123" / "prepared.onnx").write_bytes(b"x")
        (export / f".model.onnx.unverified.tmp-{live.pid}").write_bytes(b"being written")
        (export / f".model.unverified.xml.tmp-{os.getpid()}-xyz").mkdir()
        (export / f".link.tmp-{dead_pid}").symlink_to(outside)
        (export / "model.onnx").write_bytes(b"the export")
        removed = remove_stale_temporaries(export, dead_owners_only=True)
        assert sorted(p.name for p in removed) == [f".model.int8.onnx.unverified.tmp-{dead_pid}-abc123",
                                                   f".model.onnx.unverified.tmp-{dead_pid}"]
        assert sorted(p.name for p in export.iterdir()) == [
            f".link.tmp-{dead_pid}", f".model.onnx.unverified.tmp-{live.pid}",
            f".model.unverified.xml.tmp-{os.getpid()}-xyz", "model.onnx"]
        assert (outside / "keep.txt").read_text() == "mine"
    finally:
        live.kill()
        live.wait()


# Writes left outside the helper, each for a reason: the verified export is a rename of a finished file
# (convert.py keeps a failed one as <name>.unverified for inspection; export/openvino.py renames the two
# files of a verified IR), the digits folder and a converted dataset (dataloader/convert.py) are written whole
# into a staging folder that is renamed into place.
OUTSIDE_THE_HELPER = {"utils/atomic.py", "applications/convert.py", "export/openvino.py", "dataloader/digits.py",
                      "dataloader/convert.py"}


def _hand_written_writes(tree: ast.AST) -> list[int]:
    """Lines of ``tree`` that rename a temporary file or write a whole file without ``utils/atomic.py``."""
    lines = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        if isinstance(func, ast.Attribute):
            owner = func.value.id if isinstance(func.value, ast.Name) else ""
            to_tmp = "tmp" in owner or any(isinstance(a, ast.Name) and "tmp" in a.id for a in node.args)
            renames = func.attr in ("replace", "rename") and (owner == "os" or to_tmp)
            if renames or func.attr in ("write_text", "write_bytes", "savefig") and not to_tmp:
                lines.append(node.lineno)
        elif isinstance(func, ast.Name) and func.id == "open":
            modes = [a for a in node.args[1:2]] + [k.value for k in node.keywords if k.arg == "mode"]
            if any(isinstance(m, ast.Constant) and "w" in str(m.value) for m in modes):
                lines.append(node.lineno)
    return lines


def test_every_file_writer_goes_through_the_atomic_helper():
    offenders = []
    for path in sorted(ROOT.glob("*.py")) + sorted(ROOT.glob("[a-z]*/**/*.py")):
        rel = path.relative_to(ROOT).as_posix()
        if rel.startswith(("tests/", "benchmarks/")) or rel in OUTSIDE_THE_HELPER:
            continue
        offenders += [f"{rel}:{line}" for line in _hand_written_writes(ast.parse(path.read_text()))]
    assert offenders == [], f"write through utils/atomic.py instead: {offenders}"


def test_pictures_are_written_atomically_in_the_format_their_suffix_names(tmp_path):
    from utils.atomic import save_image_atomic
    from utils.plots import _pyplot, save_figure

    rgba = Image.new("RGBA", (4, 4))
    assert Image.open(save_image_atomic(rgba, tmp_path / "a.png")).format == "PNG"
    assert Image.open(save_image_atomic(rgba.convert("RGB"), tmp_path / "a.jpg")).format == "JPEG"
    with pytest.raises(OSError, match="RGBA as JPEG"):
        save_image_atomic(rgba, tmp_path / "a.jpg")  # fails inside the writer: the old JPEG stays
    assert Image.open(tmp_path / "a.jpg").format == "JPEG"
    fig = _pyplot().figure()
    assert Image.open(save_figure(fig, tmp_path / "plot.png")).format == "PNG"
    assert leftovers(tmp_path) == []


# ------------------------------------------------------------------------------------ one folder walker
def png(path: Path, value: int = 128) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((8, 8, 3), value, np.uint8)).save(path, format="PNG")
    return path


@pytest.fixture
def messy_dataset(tmp_path) -> tuple[Path, list[str]]:
    """``data/train/{a,b}`` where class ``a`` holds every case the walkers used to disagree on; returns the
    root and the files of class ``a`` every reader must see, in order (relative to the class folder)."""
    root, outside = tmp_path / "data", tmp_path / "elsewhere"
    a = root / "train" / "a"
    png(a / "1.png"), png(a / "2.PNG"), png(a / "3.JpG")
    png(a / ".hidden.png"), png(a / ".thumbnails" / "4.png")  # hidden file and hidden folder
    (a / "notes.txt").write_text("not an image")
    png(a / "sub" / "5.png"), png(a / "sub" / ".6.png")
    os.symlink(png(outside / "linked.png"), a / "7.png")                  # symlinked file
    png(outside / "folder" / "8.png")
    os.symlink(outside / "folder", a / "linked_folder")                   # symlinked folder
    os.symlink(a, a / "sub" / "loop")                                     # a link back up: not walked
    png(root / "train" / "b" / "1.png")
    png(root / "train" / ".cache" / "1.png")                              # hidden class folder
    expected = ["1.png", "2.PNG", "3.JpG", "7.png", "linked_folder/8.png", "sub/5.png"]
    return root, expected


def test_datasets_predict_visualize_and_check_images_see_the_same_files(messy_dataset):
    from applications.setup.common import source_dataset
    from dataloader.checking import check_dataset
    from dataloader.datasets import ClassificationDataset
    from dataloader.sources import source_images
    from models.spec import ModelSpec

    root, expected = messy_dataset
    a = root / "train" / "a"
    expected = [str(a / name) for name in expected]
    dataset = ClassificationDataset(root, "folder", "train")
    assert dataset.class_names == ["a", "b"]
    seen = {"datasets": [path for path, label in dataset.samples if label == 0],
            "predict": [str(p) for p in source_images(a)[0]]}
    cfg = argparse.Namespace(max_image_pixels=10**6, skip_bad_images=False, dataset="folder")
    restored = argparse.Namespace(spec=ModelSpec("resnet18", ("a", "b"), (8, 8), (0.5,) * 3, (0.25,) * 3))
    seen["visualize"] = [path for path, _ in source_dataset(cfg, str(a), "--visual_source", restored.spec,
                                                            skip_bad=False).samples]
    findings = check_dataset(root)
    seen["check_images"] = [f.source for f in findings if f.label == "a" and f.status != "stray"]
    assert seen == {name: expected for name in seen}
    assert [f.source for f in findings if f.status == "stray"] == [str(a / "notes.txt")]
    assert all(f.status == "ok" for f in findings if f.status != "stray")


def test_walker_lists_a_dangling_link_so_its_reader_reports_it(tmp_path):
    from dataloader.io import list_images
    png(tmp_path / "a.png")
    os.symlink(tmp_path / "gone.png", tmp_path / "b.png")
    assert list_images(tmp_path) == [tmp_path / "a.png", tmp_path / "b.png"]


# ---------------------------------------------------------------------------------------- SourceImages
def test_predict_and_visualize_share_one_source_images_with_one_unknown_label(tmp_path):
    import applications.predict as predict
    import applications.visualize as visualize
    from dataloader import ImageDecodeError
    from dataloader.sources import UNKNOWN_LABEL, SourceImages, collect_sources

    assert predict.SourceImages is visualize.SourceImages is SourceImages and UNKNOWN_LABEL == -1
    png(tmp_path / "imgs" / "good.png")
    (tmp_path / "imgs" / "broken.png").write_bytes(b"not a png")
    paths = collect_sources(tmp_path / "imgs", "--visual_source")
    assert [p.name for p in paths] == ["broken.png", "good.png"]

    skipping = SourceImages(paths, lambda x: x, skip_bad=True)
    assert skipping[0] is None and "cannot decode" in skipping.failure(0)
    image, label, index = skipping[1]
    assert image.shape == (3, 8, 8) and (label, index) == (UNKNOWN_LABEL, 1)
    assert skipping.targets == [UNKNOWN_LABEL] * 2 and skipping.split == "source"
    with pytest.raises(ImageDecodeError, match=r"broken\.png: .*; fix or remove it, or pass --skip_bad_images"):
        SourceImages(paths, lambda x: x)[0]
    with pytest.raises(FileNotFoundError, match="--visual_source: '.*nowhere' does not exist"):
        collect_sources(tmp_path / "nowhere", "--visual_source")
    shutil.rmtree(tmp_path / "imgs")
    (tmp_path / "imgs").mkdir()
    with pytest.raises(ValueError, match=r"--predict: no images in .*imgs \(\.jpg"):
        collect_sources(tmp_path / "imgs", "--predict")
