"""Bad data, killed runs and non-finite losses: each met with a clear error and nothing lost."""
from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
from PIL import Image

from dataloader.checking import check_bytes, check_dataset
from dataloader.digits import make_digits
from helpers import ROOT, run_main


def png_bytes(mode: str = "RGB", size=(16, 16), **save) -> bytes:
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 256, (*size[::-1], 3), dtype=np.uint8))
    if mode == "I;16":
        img = Image.fromarray(np.asarray(img.convert("L"), dtype=np.uint16) * 257)
    elif mode == "P":
        img = img.convert("P")
        save["transparency"] = 0
    elif mode != "RGB":
        img = img.convert(mode)
    buf = io.BytesIO()
    img.save(buf, "JPEG" if mode == "CMYK" else "PNG", **save)
    return buf.getvalue()


@pytest.fixture
def seeded_bad(tiny_data, tmp_path):
    """The tiny folder dataset plus one file of each kind of problem in train/1."""
    root = shutil.copytree(tiny_data["folder"], tmp_path / "data")
    folder = root / "train" / "1"
    good = png_bytes()
    files = {
        "zero.png": b"",
        "text.png": b"this is not an image at all\n",
        "truncated.png": good[: len(good) // 2],
        "garbled.jpg": b"\xff\xd8\xff\xe0" + os.urandom(200),
        "cmyk.jpg": png_bytes("CMYK"),
        "sixteen.png": png_bytes("I;16"),
        "palette.png": png_bytes("P"),
        "notes.txt": b"stray file",
    }
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return root


EXPECTED = {"zero.png": ("bad", "zero-byte"), "text.png": ("bad", "not an image"),
            "truncated.png": ("bad", "truncated"), "garbled.jpg": ("bad", ""),
            "cmyk.jpg": ("unusual", "CMYK"), "sixteen.png": ("unusual", "16-bit"),
            "palette.png": ("unusual", "palette image with transparency"), "notes.txt": ("stray", "")}


def test_check_images_finds_one_of_each_kind(seeded_bad):
    findings = {Path(f.source).name: f for f in check_dataset(seeded_bad, workers=2)}
    for name, (status, reason) in EXPECTED.items():
        assert findings[name].status == status and reason in findings[name].reason, (name, findings[name])
    problems = {n for n, f in findings.items() if f.status != "ok"}
    assert problems == set(EXPECTED)


def test_check_images_cli_exit_code_summary_and_move(seeded_bad, tmp_path, capsys):
    # One real process for the exit code; the reruns call the same main() in-process (each process start
    # imports torch, about 4 CPU seconds, and the unit tier has 30 per test).
    import importlib
    check_images = importlib.import_module("utils.check_images")
    argv = [str(seeded_bad), "-j", "2", "--no_progress"]
    r = subprocess.run([sys.executable, "utils/check_images.py", *argv], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 1, r.stderr
    assert "4 bad, 3 unusual, 1 stray" in r.stdout and "zero-byte file" in r.stdout
    assert any(line.split()[:2] == ["train", "1"] and line.split()[3] == "4" for line in r.stdout.splitlines())
    assert check_images.main(argv + ["--move_bad_to", str(tmp_path / "quarantine")]) == 1
    assert sorted(p.name for p in (tmp_path / "quarantine/train/1").iterdir()) == \
        ["garbled.jpg", "text.png", "truncated.png", "zero.png"]
    capsys.readouterr()
    assert check_images.main(argv) == 0 and "0 bad, 3 unusual" in capsys.readouterr().out
    assert check_images.main(argv + ["--strict"]) == 1


def test_check_images_on_txt_and_zip_and_the_bundled_digits(tiny_data):
    for kind in ("txt", "zip"):
        findings = check_dataset(tiny_data[kind], workers=1)
        assert len(findings) == 54 and all(f.status == "ok" for f in findings)
    digits = make_digits(ROOT / "data" / "digits")
    findings = check_dataset(digits, workers=2)
    assert len(findings) == 1797 and all(f.status == "ok" for f in findings)


def test_clip_grad_bounds_the_update(tiny_data):
    from criterions import create_criterion
    from dataloader import BatchPreprocessor, ClassificationDataset, create_loader, create_transform
    from engine import train_one_epoch
    ds = ClassificationDataset(tiny_data["folder"], "folder", "train", transform=create_transform(False, (16, 16)))
    loader = create_loader(ds, batch_size=30, workers=0, train=True)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, 3))
    with torch.no_grad():
        model[1].weight.mul_(1000)  # huge logits, huge gradients
    before = [p.detach().clone() for p in model.parameters()]
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    train_one_epoch(model, loader, create_criterion("softmax"), opt, clip_grad=0.5, progress=False,
                    preprocess=BatchPreprocessor([0.5] * 3, [0.25] * 3, torch.device("cpu")))
    step = torch.cat([(p - b).flatten() for p, b in zip(model.parameters(), before)])
    assert step.norm().item() == pytest.approx(0.5, rel=1e-4)


def test_unsafe_checkpoint_is_refused_by_every_mode(tiny_data, tmp_path, caplog):
    import argparse
    torch.save({"model": {}, "args": argparse.Namespace(lr=1)}, tmp_path / "unsafe.pth")
    assert run_main(["--evaluation", "--resume", str(tmp_path / "unsafe.pth"), "--data",
                     str(tiny_data["folder"])]) == 1
    assert "cannot be loaded safely (weights_only=True)" in caplog.text


def test_only_environment_os_errors_become_one_line():
    import errno

    import main
    full = OSError(errno.ENOSPC, "No space left on device", "/data/out/x")
    assert main._environment_error(full) == ("OSError: cannot use /data/out/x: No space left on device; free some "
                                             "space or choose another --output")
    assert main._environment_error(OSError(errno.EIO, "Input/output error")) is None  # may be a bug: traceback
    assert main._environment_error(OSError("no errno")) is None


def test_check_bytes_calls_16_bit_colour_png_and_tiff_unusual_and_names_bit_depth():
    from helpers import encode_png16, encode_tiff16, photo16
    for name, data in (("c16.png", encode_png16(photo16())), ("c16.tif", encode_tiff16(photo16())),
                       ("g16.png", png_bytes("I;16"))):
        status, reason = check_bytes(data, name)
        assert status == "unusual" and "16-bit" in reason and "--bit_depth 16" in reason, (name, reason)
    assert check_bytes(png_bytes(), "rgb8.png") == ("ok", "")
