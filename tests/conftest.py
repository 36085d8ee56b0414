"""Shared fixtures: tiny real datasets (scikit-learn digits) in the three layouts, and a main() runner."""
from __future__ import annotations

import json
import shutil
import struct
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import config  # noqa: E402
from dataloader import BatchPreprocessor, ClassificationDataset, create_transform, read_class_names  # noqa: E402
from models import create_model  # noqa: E402
from utils.checkpoint import save_checkpoint  # noqa: E402
from utils.dataset_tools import write_txt_lists, write_zip_archives  # noqa: E402

TINY_CLASSES = ("0", "1", "7")
TINY_COUNTS = {"train": 10, "val": 4, "test": 4}
TINY_SIZE = 16


def write_digit_folders(root: Path, classes=TINY_CLASSES, counts=TINY_COUNTS, size=TINY_SIZE) -> Path:
    """A small class-folder dataset of real digits: ``root/{split}/<class>/<index>.png``."""
    from sklearn.datasets import load_digits
    digits = load_digits()
    images = (digits.images / 16.0 * 255).round().astype(np.uint8)
    for c in classes:
        idx = np.flatnonzero(digits.target == int(c))
        start = 0
        for split, n in counts.items():
            folder = root / split / c
            folder.mkdir(parents=True, exist_ok=True)
            for i in idx[start:start + n]:
                img = Image.fromarray(images[i], mode="L").resize((size, size), Image.BICUBIC).convert("RGB")
                img.save(folder / f"{i:04d}.png")
            start += n
    return root


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> dict[str, Path]:
    """The same tiny digits dataset as class folders, txt lists and zip archives (read-only: copy to change)."""
    base = tmp_path_factory.mktemp("tiny")
    folder = write_digit_folders(base / "folder")
    return {"folder": folder, "txt": write_txt_lists(folder, base / "txt"),
            "zip": write_zip_archives(folder, base / "zip")}


@pytest.fixture(scope="session")
def tiny_run(tiny_data, tmp_path_factory) -> Path:
    """A finished 1-epoch tiny training run (resnet18, tag v), shared by the end-to-end tests that only need
    a trained checkpoint: they read it and may add outputs of other modes beside it (visual/, ...)."""
    out = tmp_path_factory.mktemp("tiny_run")
    assert run_main(tiny_train_args(tiny_data["folder"], out, "--tag", "v", "--epochs", "1")) == 0
    return out / "resnet18" / "v"


@pytest.fixture
def data(tiny_data, tmp_path):
    """A writable copy of the tiny folder dataset (side files are written into DATA)."""
    return shutil.copytree(tiny_data["folder"], tmp_path / "data")


@pytest.fixture
def bomb_data(tiny_data, tmp_path):
    """A writable copy of the tiny folder dataset with a 30000 x 30000 PNG bomb in train/1."""
    root = shutil.copytree(tiny_data["folder"], tmp_path / "data")
    write_png_bomb(root / "train" / "1" / "bomb.png")
    return root


@pytest.fixture
def caches(tmp_path, monkeypatch) -> Path:
    """Empty library caches in tmp_path, and downloads forbidden."""
    home = tmp_path / "home"
    monkeypatch.setenv("TORCH_HOME", str(home / "torch"))
    monkeypatch.setenv("HF_HOME", str(home / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return home


def write_png_bomb(path: Path, width: int = 30000, height: int = 30000) -> Path:
    """A real, valid 1-bit grey PNG of ``width x height`` black pixels, written without ever holding them:
    30000 x 30000 (900 megapixels, 2.7 GB as RGB) compresses to about 110 KB."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    row = bytes(1 + (width + 7) // 8)  # filter byte 0, then the packed bits
    deflate = zlib.compressobj(9)
    rows_per_block = max(1, 2**22 // len(row))
    idat = b"".join(deflate.compress(row * min(rows_per_block, height - start))
                    for start in range(0, height, rows_per_block)) + deflate.flush()
    Path(path).write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0))
                           + chunk(b"IDAT", idat) + chunk(b"IEND", b""))
    return Path(path)


def tiny_train_args(data: Path, out: Path, *extra: str, dataset: str = "folder") -> list[str]:
    """Flags for a fast training run on the tiny dataset."""
    return ["--train", "--data", str(data), "--dataset", dataset, "--arch", "resnet18",
            "--image_size", str(TINY_SIZE), str(TINY_SIZE), "-b", "8", "-j", "0", "--epochs", "2",
            "--lr", "0.05", "--warmup", "0", "--output", str(out), "--no_progress", *extra]


def run_main(args: list[str]) -> int:
    import main
    return main.main(args)


def read_json(path: Path):
    return json.loads(Path(path).read_text())


def assert_nested_close(a, b, rel: float = 1e-4, abs_tol: float = 1e-6, where: str = "") -> None:
    """``a`` and ``b`` (JSON-like: dicts, lists, numbers, strings) are equal, floats within a tolerance.

    Two computations of the same number (another batch size, another CPU's kernels) agree to a few
    ulps of float32, not bit for bit: labels, names, counts and keys are compared exactly."""
    if isinstance(a, dict) and isinstance(b, dict):
        assert a.keys() == b.keys(), (where, sorted(a.keys() ^ b.keys()))
        for key in a:
            assert_nested_close(a[key], b[key], rel, abs_tol, f"{where}.{key}")
    elif isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        assert len(a) == len(b), (where, len(a), len(b))
        for i, (x, y) in enumerate(zip(a, b)):
            assert_nested_close(x, y, rel, abs_tol, f"{where}[{i}]")
    elif isinstance(a, float) or isinstance(b, float):
        assert not isinstance(a, bool) and not isinstance(b, bool), (where, a, b)
        assert a == pytest.approx(b, rel=rel, abs=abs_tol), (where, a, b)
    else:
        assert a == b, (where, a, b)


def calibrated_checkpoint(run_dir: Path, arch: str, data: Path, image_size: int, **overrides) -> Path:
    """``run_dir/checkpoints/best.pth`` (beside ``run_dir/config.yaml``) in train.py's format: ``arch`` with random weights (seed 0) and
    batch-norm statistics of the training images; ``overrides`` set config values (criterion, eval_resize...)."""
    cfg = config.build_parser().parse_args(["--train", "--arch", arch, "--data", str(data),
                                            "--image_size", str(image_size), str(image_size)])
    for key, value in overrides.items():
        setattr(cfg, key, value)
    classes = read_class_names(data, "folder")
    train = ClassificationDataset(data, "folder", "train", transform=create_transform(False, cfg.image_size))
    images = BatchPreprocessor(cfg.mean, cfg.std, torch.device("cpu"))(torch.stack([img for img, _, _ in train]))
    torch.manual_seed(0)
    model = create_model(arch, len(classes))
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # exact statistics of one pass
    with torch.no_grad():
        model.train()(images)
    for m in norms:
        m.momentum = 0.1
    path = run_dir / "checkpoints" / "best.pth"
    save_checkpoint({"model": model.state_dict(), "class_names": classes, "arch": arch,
                     "config": config.config_to_dict(cfg)}, path)
    config.save_config(cfg, run_dir / "config.yaml")  # a run directory, as training leaves it
    return path
