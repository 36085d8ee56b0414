"""applications/visualize.py end to end: main.py --visual_data / --visual_source on a real tiny checkpoint."""
from __future__ import annotations

import logging
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from applications.setup.common import build_dataset, preprocessor, restore_for_inference
from explain.pictures import cam_overlays_for_tensorboard
from helpers import TINY_CLASSES, run_main


@pytest.fixture(scope="module")
def checkpoint(tiny_run):
    return tiny_run / "checkpoints" / "best.pth"


def visual_args(checkpoint, data, *extra):
    return ["--resume", str(checkpoint), "--data", str(data), "-j", "0", "-b", "5", "--no_progress", *extra]


def pngs(folder):
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*.png"))


@pytest.mark.slow
@pytest.mark.parametrize("method", ["cam", "grad-cam", "grad-cam++"])
def test_visual_data_writes_an_overlay_per_image_and_a_gallery(tiny_data, checkpoint, method, caplog):
    caplog.set_level(logging.INFO)
    assert run_main(visual_args(checkpoint, tiny_data["folder"], "--visual_data", "test", "--visual_method",
                                method)) == 0
    out = checkpoint.parent.parent / "visual" / method / "test"
    expected = sorted(f"{c}/{p.stem}.png" for c in TINY_CLASSES for p in (tiny_data["folder"] / "test" / c).iterdir())
    assert pngs(out) == sorted(expected + ["gallery.png"])
    overlay = np.asarray(Image.open(out / expected[0]))
    assert overlay.shape[1] >= 128 and overlay.shape[0] > 128  # enlarged from 16 px, with a title bar
    gallery = np.asarray(Image.open(out / "gallery.png"))
    assert gallery.shape[0] > 3 * 96 and gallery.std() > 10
    if method == "cam":  # bound to the pooled map: 1 x 1 for resnet18 at 16 px, said, not hidden
        assert f"{method} on layer 'layer4'" in caplog.text and "1 x 1 maps at input size 16x16" in caplog.text
    else:  # the default is the last stage with at least 4 x 4 maps, and the log says why
        assert f"{method} on layer 'layer1' of resnet18 (4x4 maps)" in caplog.text
        assert "the family's last stage 'layer4' gives 1 x 1 maps" in caplog.text and "1 x 1 maps at" not in caplog.text


def test_visual_class_limit_and_layer(tiny_data, checkpoint):
    args = visual_args(checkpoint, tiny_data["folder"], "--visual_data", "val", "--visual_method", "grad-cam",
                       "--visual_class", "7", "--visual_limit", "4", "--target_layer", "layer2")
    assert run_main(args) == 0
    out = checkpoint.parent.parent / "visual" / "grad-cam" / "val"
    files = [p for p in pngs(out) if p != "gallery.png"]
    assert len(files) == 4 and {f.split("/")[0] for f in files} == set(TINY_CLASSES)  # classes in turn


def test_visual_source_image_and_folder(tiny_data, checkpoint, tmp_path):
    folder = tmp_path / "pictures" / "nested"
    folder.mkdir(parents=True)
    source = next((tiny_data["folder"] / "test" / "7").iterdir())
    shutil.copy(source, folder / "a.png")
    Image.open(source).resize((40, 20)).save(folder.parent / "wide.jpg")  # another size and format
    assert run_main(visual_args(checkpoint, tiny_data["folder"], "--visual_source", str(folder.parent),
                                "--visual_method", "grad-cam++")) == 0
    out = checkpoint.parent.parent / "visual" / "grad-cam++" / "source"
    assert pngs(out) == ["gallery.png", "unknown/a.png", "unknown/wide.png"]
    assert run_main(visual_args(checkpoint, tiny_data["folder"], "--visual_source", str(source),
                                "--visual_method", "eigen-cam")) == 0
    assert (checkpoint.parent.parent / "visual" / "eigen-cam" / "source" / "unknown" / f"{source.stem}.png").is_file()


def test_visual_source_reads_every_row_of_a_hugging_face_dataset(tiny_data, checkpoint, tmp_path):
    """--visual_source on a save_to_disk folder: each row explained once, named <split>_<row> (the splits' rows
    share numbers), as --predict names them."""
    from datasets import Dataset, DatasetDict, Features
    from datasets import Image as HfImage
    files = sorted((tiny_data["folder"] / "test").glob("*/*.png"))[:3]
    rows = [{"bytes": f.read_bytes(), "path": None} for f in files]
    features = Features({"image": HfImage()})
    DatasetDict({"train": Dataset.from_dict({"image": rows[:1]}, features=features),
                 "test": Dataset.from_dict({"image": rows[1:]}, features=features)}).save_to_disk(str(tmp_path / "sd"))
    assert run_main(visual_args(checkpoint, tiny_data["folder"], "--visual_source", str(tmp_path / "sd"),
                                "--visual_method", "grad-cam")) == 0
    out = checkpoint.parent.parent / "visual" / "grad-cam" / "source"
    assert pngs(out) == ["gallery.png", "unknown/test_000000.png", "unknown/test_000001.png",
                         "unknown/train_000000.png"]


@pytest.mark.parametrize("flags, message", [
    (["--visual_class", "nine"], "--visual_class 'nine' is not a class of this model; choose from: 0, 1, 7"),
    (["--target_layer", "layer9"], "unknown --target_layer 'layer9' for ResNet. Close matches: layer"),
])
def test_bad_class_or_layer_is_a_one_line_error(tiny_data, checkpoint, flags, message, caplog):
    assert run_main(visual_args(checkpoint, tiny_data["folder"], "--visual_data", "test", *flags)) == 1
    assert message in caplog.text


def test_cam_overlays_for_tensorboard(tiny_data, checkpoint, tmp_path):
    from config import parse_config
    cfg = parse_config(visual_args(checkpoint, tiny_data["folder"], "--visual_data", "val"))
    restored = restore_for_inference(cfg)
    model = restored.model.train()
    dataset = build_dataset(cfg, "val", restored.class_names, train=False, spec=restored.spec)
    batch = cam_overlays_for_tensorboard(model, dataset, preprocessor(restored.spec, restored.device),
                                         restored.class_names, arch="resnet18", target_layer="layer2", n=4)
    assert batch.dtype == torch.uint8 and batch.shape[:2] == (4, 3) and batch.shape[3] >= 128
    assert model.training and all(p.requires_grad and p.grad is None for p in model.parameters())
    assert all(len(m._forward_hooks) == 0 for m in model.modules())
    from torch.utils.tensorboard import SummaryWriter
    with SummaryWriter(str(tmp_path / "tb")) as writer:
        writer.add_images("val/cam", batch, 1)
    assert any((tmp_path / "tb").iterdir())
