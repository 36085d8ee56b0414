"""Decompression bombs and image limits: one pixel limit checked from the header, before decoding, in every
reader (dataset, cache, --gpu_decode, predict, visualize, check_images, the demo), and a size limit on zip
members; plus the image-side one-line errors (worker errors, unreadable files, label gaps, check_images)."""
from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import config
from dataloader import ClassificationDataset, DatasetError, ImageDecodeError, create_transform, decode_rgb
from dataloader.checking import check_dataset
from dataloader.io import DEFAULT_MAX_IMAGE_PIXELS, ImageTooLarge, max_encoded_bytes
from dataloader.layout_writers import write_txt_lists
from helpers import ROOT, calibrated_checkpoint, peak_mb, run_main, write_png_bomb

MB = 2**20


def jpeg_bomb(path: Path, width: int = 30000, height: int = 30000) -> Path:
    """A small real JPEG whose frame header is rewritten to declare ``width x height``."""
    buf = io.BytesIO()
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(buf, "JPEG")
    data = bytearray(buf.getvalue())
    sof = data.index(b"\xff\xc0")
    data[sof + 5:sof + 9] = height.to_bytes(2, "big") + width.to_bytes(2, "big")
    path.write_bytes(bytes(data))
    return path


def zip_bomb(root: Path, size: int = 384 * MB) -> Path:
    """The tiny zip dataset with one more train member of ``size`` zero bytes (deflated to ~0.4 MB): just over
    the default limit (4 bytes per pixel of Pillow's limit + 16 MiB = 357 MiB)."""
    with zipfile.ZipFile(root / "train.zip", "a", zipfile.ZIP_DEFLATED, compresslevel=6) as zf:
        with zf.open("train/1/huge.png", "w", force_zip64=True) as f:
            block = bytes(64 * MB)
            for _ in range(size // len(block)):
                f.write(block)
    with open(root / "train_map.txt", "a") as f:
        f.write("train/1/huge.png\t1\n")
    return root


@pytest.fixture(scope="module")
def checkpoint(tiny_data, tmp_path_factory):
    return calibrated_checkpoint(tmp_path_factory.mktemp("bombs") / "run", "resnet18", tiny_data["folder"], 16)


# ----------------------------------------------------------------------------------------- the one limit
def test_the_default_limit_is_pillows_in_every_reader():
    assert config.DEFAULT_MAX_IMAGE_PIXELS == DEFAULT_MAX_IMAGE_PIXELS == Image.MAX_IMAGE_PIXELS == 89_478_485
    assert config.build_parser().parse_args([]).max_image_pixels == DEFAULT_MAX_IMAGE_PIXELS
    assert max_encoded_bytes(DEFAULT_MAX_IMAGE_PIXELS) == 4 * 89_478_485 + 16 * MB and max_encoded_bytes(0) is None


def test_a_png_bomb_is_refused_from_its_header_without_decoding(tmp_path):
    bomb = write_png_bomb(tmp_path / "bomb.png")
    assert bomb.stat().st_size < 150_000
    rise, out = peak_mb(f"""
        from dataloader import decode_rgb
        try:
            decode_rgb(open({str(bomb)!r}, "rb").read(), name="bomb.png")
        except Exception as e:
            print(type(e).__name__, e)
    """)
    assert "ImageTooLarge bomb.png: 30000x30000 pixels" in out and "--max_image_pixels" in out
    assert rise < 100, f"peak memory rose by {rise:.0f} MB: the bomb was decoded"


def test_the_limit_applies_to_every_format_and_the_flag_moves_it(tmp_path):
    small = io.BytesIO()
    Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(small, "BMP")  # a Pillow-only format: 600 pixels
    with pytest.raises(ImageTooLarge, match=r"x.bmp: 30x20 pixels .* over the limit of 599 pixels"):
        decode_rgb(small.getvalue(), "x.bmp", max_pixels=599)
    assert decode_rgb(small.getvalue(), "x.bmp", max_pixels=600).shape == (3, 20, 30)
    with pytest.raises(ImageTooLarge, match="40000x30000"):
        decode_rgb(jpeg_bomb(tmp_path / "b.jpg", 40000, 30000).read_bytes(), "b.jpg")
    # a 169-megapixel PNG (under twice Pillow's limit, where Pillow only warns) is over the limit too
    with pytest.raises(ImageTooLarge, match="13000x13000"):
        decode_rgb(write_png_bomb(tmp_path / "169.png", 13000, 13000).read_bytes(), "169.png")
    # 0 = no limit, above twice Pillow's own: decoded
    big = write_png_bomb(tmp_path / "wide.png", 200_000, 1)
    assert decode_rgb(big.read_bytes(), "wide.png", max_pixels=0).shape == (3, 1, 200_000)
    with pytest.raises(SystemExit):
        config.parse_config(["--train", "--max_image_pixels", "-1"])


def test_the_decoded_cache_refuses_or_skips_a_bomb(bomb_data):
    from dataloader.cache import DecodedCache
    dataset = ClassificationDataset(bomb_data, "folder", "train", transform=create_transform(False, (16, 16)))
    with pytest.raises(ImageDecodeError, match=r"bomb.png: 30000x30000 pixels.*--skip_bad_images"):
        DecodedCache(dataset)
    dataset.skip_bad = True
    cache = DecodedCache(dataset)
    bad = [i for i, (path, _) in enumerate(dataset.samples) if path.endswith("bomb.png")]
    assert cache.valid.tolist().count(False) == 1 and not cache.valid[bad[0]]


def test_gpu_decode_checks_headers_on_the_cpu_before_decoding(bomb_data):
    """The --gpu_decode loader, run on the CPU: a JPEG bomb never reaches the batched JPEG decoder."""
    from dataloader.device_decode import DeviceDecodeLoader
    from dataloader.loader import SeededSampler
    jpeg_bomb(bomb_data / "train" / "7" / "bomb.jpg")
    (bomb_data / "train" / "1" / "bomb.png").unlink()
    dataset = ClassificationDataset(bomb_data, "folder", "train", transform=create_transform(False, (16, 16)))
    loader = DeviceDecodeLoader(dataset, SeededSampler(len(dataset), shuffle=False, seed=0), batch_size=64,
                                drop_last=False, workers=0, device="cpu")
    with pytest.raises(ImageDecodeError, match=r"bomb.jpg: 30000x30000 pixels.*--skip_bad_images"):
        next(iter(loader))
    dataset.skip_bad = True
    images, targets, indices = next(iter(loader))
    assert len(indices) == len(dataset) - 1 and images.shape[1:] == (3, 16, 16)


def test_a_zip_member_too_large_for_the_limit_is_refused_before_it_is_read(tiny_data, tmp_path):
    root = zip_bomb(shutil.copytree(tiny_data["zip"], tmp_path / "zip"))
    assert (root / "train.zip").stat().st_size < 5 * MB
    rise, out = peak_mb(f"""
        from dataloader import ClassificationDataset
        ds = ClassificationDataset({str(root)!r}, "zip", "train")
        try:
            ds.load(len(ds) - 1)
        except Exception as e:
            print(type(e).__name__, e)
    """)
    assert "ImageTooLarge" in out and "train.zip:train/1/huge.png: 402653184 bytes uncompressed" in out, out
    assert "over the limit of 374691156 bytes" in out and "--max_image_pixels" in out
    assert rise < 100, f"peak memory rose by {rise:.0f} MB: the member was read"
    ds = ClassificationDataset(root, "zip", "train", skip_bad=True, transform=create_transform(False, (16, 16)))
    assert ds[len(ds) - 1] is None and ds[0] is not None


# ------------------------------------------------------------------------------------ predict and visualize
def test_predict_skips_and_counts_a_bomb(tiny_data, checkpoint, tmp_path):
    source = tmp_path / "images"
    source.mkdir()
    shutil.copy(next((tiny_data["folder"] / "test" / "7").iterdir()), source / "a.png")
    write_png_bomb(source / "bomb.png")
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert run_main(["--predict", str(source), "--resume", str(checkpoint), "-j", "0", "--no_progress",
                         "-s"]) == 0
    summary = json.loads(buf.getvalue())
    assert summary["predicted"] == 1 and summary["unreadable"] == 1
    log = Path(summary["log"]).read_text()
    assert "bomb.png\tUNREADABLE: 30000x30000 pixels" in log and "--max_image_pixels" in log


def test_visualize_refuses_or_skips_a_bomb(tiny_data, checkpoint, tmp_path, caplog):
    source = tmp_path / "images"
    source.mkdir()
    shutil.copy(next((tiny_data["folder"] / "test" / "7").iterdir()), source / "a.png")
    write_png_bomb(source / "bomb.png")
    args = ["--visual_source", str(source), "--resume", str(checkpoint), "-j", "0", "--no_progress"]
    assert run_main(args) == 1
    assert "bomb.png: 30000x30000 pixels" in caplog.text and "--max_image_pixels" in caplog.text
    with contextlib.redirect_stdout(io.StringIO()):
        assert run_main(args + ["--skip_bad_images"]) == 0
    # --visual_data reads the dataset with the same limit
    assert run_main(["--visual_data", "train", "--resume", str(checkpoint), "--data", str(tiny_data["folder"]),
                     "-j", "0", "--no_progress", "--max_image_pixels", "100"]) == 1
    assert "16x16 pixels (0.0 megapixels) is over the limit of 100 pixels" in caplog.text


# ------------------------------------------------------------------------------------------ check_images
def check_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "utils/check_images.py", *args, "--no_progress"], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)


def test_check_images_reports_bombs_and_a_169_megapixel_image(bomb_data):
    write_png_bomb(bomb_data / "train" / "7" / "big169.png", 13000, 13000)
    r = check_cli(str(bomb_data), "-j", "2")
    assert r.returncode == 1 and r.stderr == "", r.stderr[-3000:]
    assert "2 bad, 0 unusual" in r.stdout
    for name, size in (("bomb.png", "30000x30000"), ("big169.png", "13000x13000")):
        line = next(line for line in r.stdout.splitlines() if name in line)
        assert line.startswith("BAD") and f"too large: {size} pixels" in line and "--max_image_pixels" in line
    r = check_cli(str(bomb_data), "-j", "1", "--max_image_pixels", "200000000")  # 169 MP now allowed
    assert r.returncode == 1 and "1 bad, 0 unusual" in r.stdout and r.stderr == ""


def test_check_images_refuses_a_too_large_zip_member(tiny_data, tmp_path):
    root = zip_bomb(shutil.copytree(tiny_data["zip"], tmp_path / "zip"))
    findings = [f for f in check_dataset(root) if f.status != "ok"]
    assert len(findings) == 1 and "huge.png" in findings[0].source
    assert "too large: 402653184 bytes uncompressed" in findings[0].reason


def test_check_images_missing_folder_and_move_target_inside_the_data(tiny_data, tmp_path):
    r = check_cli(str(tmp_path / "nowhere"))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines()[-1].endswith(f"dataset root '{tmp_path / 'nowhere'}' does not exist "
                                                      f"or is not a folder")
    root = shutil.copytree(tiny_data["folder"], tmp_path / "data")
    (root / "train" / "1" / "broken.png").write_bytes(b"broken")
    r = check_cli(str(root), "--move_bad_to", str(root / "train" / "quarantine"))
    assert r.returncode == 2 and "is inside the dataset" in r.stderr and (root / "train/1/broken.png").exists()
    assert not (root / "train" / "quarantine").exists()


def test_check_images_keeps_checking_a_split_after_structural_errors(tiny_data, tmp_path):
    root = shutil.copytree(tiny_data["folder"], tmp_path / "data")
    for f in (root / "val" / "0").iterdir():         # an empty class folder: structural
        f.unlink()
    shutil.copytree(root / "val" / "7", root / "val" / "8")  # a class train does not have: structural
    (root / "val" / "1" / "broken.png").write_bytes(b"broken")  # found only if val is still checked
    bad = [f for f in check_dataset(root) if f.status == "bad"]
    assert len(bad) == 3, bad
    assert any("class '8'" in f.reason for f in bad) and any("val/0 holds no images" in f.reason for f in bad)
    assert any(f.source.endswith("val/1/broken.png") for f in bad)
    txt = write_txt_lists(shutil.copytree(tiny_data["folder"], tmp_path / "folder"), tmp_path / "txt")
    lines = (txt / "val.txt").read_text().splitlines()
    (txt / lines[0].rsplit(" ", 1)[0]).write_bytes(b"broken")
    lines[1] = "nolabel"
    lines[2] = "missing.png 1"
    (txt / "val.txt").write_text("\n".join(lines) + "\n")
    reasons = [f.reason for f in check_dataset(txt) if f.status == "bad"]
    assert len(reasons) == 3, reasons
    assert any("val.txt:2: malformed line" in r for r in reasons) and any("val.txt:3: image" in r for r in reasons)


def test_a_label_gap_without_classes_txt_is_an_error_naming_the_line(tiny_data, tmp_path):
    root = write_txt_lists(tiny_data["folder"], tmp_path / "txt")
    (root / "classes.txt").unlink()
    lines = (root / "train.txt").read_text().splitlines()
    lines[4] = lines[4].rsplit(" ", 1)[0] + " 15"
    (root / "train.txt").write_text("\n".join(lines) + "\n")
    with pytest.raises(DatasetError, match=r"train.txt:5: label 15 leaves label 3 without an image.*classes.txt"):
        ClassificationDataset(root, "txt", "train")
    (root / "classes.txt").write_text("\n".join(str(i) for i in range(16)) + "\n")  # declared: accepted
    assert len(ClassificationDataset(root, "txt", "train").class_names) == 16


def test_skip_bad_images_skips_an_unreadable_file(tiny_data, tmp_path):
    root = shutil.copytree(tiny_data["folder"], tmp_path / "data")
    os.symlink(tmp_path / "gone.png", root / "train" / "7" / "dangling.png")
    ds = ClassificationDataset(root, "folder", "train", transform=create_transform(False, (16, 16)))
    index = next(i for i, (p, _) in enumerate(ds.samples) if p.endswith("dangling.png"))
    with pytest.raises(ImageDecodeError, match=r"dangling.png: cannot read \(No such file or directory\)"):
        ds[index]
    ds.skip_bad = True
    assert ds[index] is None
    # a training run over it with --skip_bad_images skips it and counts it: the bad-input matrix's case
    # skip-bad-images-skips-an-unreadable-file, as a real process
