"""Decompression bombs and image limits: one pixel limit checked from the header, before decoding, in every
reader (dataset, cache, --gpu_decode, predict, visualize, check_images, the demo), and a size limit on zip
members; plus the image-side one-line errors (worker errors, unreadable files, label gaps, check_images)."""
from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

from dataloader import ClassificationDataset, ImageDecodeError, create_transform
from helpers import ROOT, peak_mb, read_json, run_main, tiny_train_args

LIMIT_LINE = r"30000x30000 pixels \(900\.0 megapixels\) is over the limit of 89478485 pixels.*--max_image_pixels"


# ------------------------------------------------------------------------------------------------ training
def test_training_stops_on_a_bomb_in_one_line_or_skips_it_without_decoding(bomb_data, tmp_path):
    args = tiny_train_args(bomb_data, tmp_path / "out", "--epochs", "1", "--seed", "0")
    code = f"""
        import main, sys
        code = main.main({args!r} + sys.argv[1:])
        print("EXIT", code)
    """
    rise, out = peak_mb(code)
    assert "EXIT 1" in out and rise < 1000, (rise, out[-2000:])
    r = subprocess.run([sys.executable, "main.py", *args], cwd=ROOT, capture_output=True, text=True, timeout=300)
    errors = [line for line in r.stderr.splitlines() if " ERROR " in line]
    assert r.returncode == 1 and "Traceback" not in r.stderr and len(errors) == 1, r.stderr[-3000:]
    assert "bomb.png: 30000x30000 pixels" in errors[0] and "--max_image_pixels" in errors[0]
    assert "--skip_bad_images" in errors[0]
    assert run_main(args + ["--tag", "skip", "--skip_bad_images"]) == 0
    history = read_json(tmp_path / "out/resnet18/skip/metrics.json")["history"]
    assert history[0]["skipped_train"] == 1


# --------------------------------------------------------------------------- one-line errors, unreadable files
def test_a_decode_error_in_a_loader_worker_is_the_same_one_line(tiny_data, tmp_path):
    from torch.utils.data import DataLoader
    root = shutil.copytree(tiny_data["folder"], tmp_path / "data")
    (root / "train" / "7" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    ds = ClassificationDataset(root, "folder", "train", transform=create_transform(False, (16, 16)))
    messages = []
    for workers in (0, 2):
        with pytest.raises(ImageDecodeError) as info:
            list(DataLoader(ds, batch_size=64, num_workers=workers))
        messages.append(str(info.value))
    assert messages[0] == messages[1] and "\n" not in messages[1] and "broken.png: cannot decode" in messages[1]
    r = subprocess.run([sys.executable, "main.py", *tiny_train_args(root, tmp_path / "out", "--epochs", "1"),
                        "-j", "2"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 1 and "Traceback" not in r.stderr and "DataLoader worker" not in r.stderr, r.stderr
    error = [line for line in r.stderr.splitlines() if " ERROR " in line]
    assert len(error) == 1 and error[0].endswith("ImageDecodeError: " + messages[0])
