"""Helpers the test files share: paths, the tiny digits dataset, main() runners and small builders.

Fixtures live in the conftest.py files; everything a test module takes from elsewhere comes from here, so no
test module imports another (tests/unit/test_test_layout.py checks it). pytest.ini puts the repository root
and tests/ on sys.path."""
from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import textwrap
import time
import zlib
from dataclasses import replace
from pathlib import Path
from typing import Sequence

import numpy as np
import pytest
import torch
import torch.nn as nn
import yaml
from PIL import Image

import config
from applications.setup.training import TrainingParts, build_training_parts
from applications.sweep import run_flags, select_variants
from config.command_line import validate
from dataloader import BatchPreprocessor, ClassificationDataset, create_transform, read_class_names
from experiments.sweep_plan import load_sweep
from models import create_model
from models.hub import resolve_weights
from models.registry import build_model
from models.spec import ModelSpec
from utils.checkpoint import load_checkpoint, save_checkpoint
from utils.distributed import DistInfo

ROOT = Path(__file__).resolve().parent.parent
TINY_CLASSES = ("0", "1", "7")
TINY_COUNTS = {"train": 10, "val": 4, "test": 4}
TINY_SIZE = 16


def project_env(**extra: str) -> dict[str, str]:
    """This process's environment with the repository root first on PYTHONPATH (for a child ``python -c``
    that imports project code), plus ``extra``."""
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": path, **extra}


# ------------------------------------------------------------------ the tiny digits dataset and main()
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


def write_pair_set(folder: Path, out: Path) -> Path:
    """A multi-label csv set (``--dataset csv --multi_label``) from a class-folder digits set: each image of a
    split side by side with another of that split (the k-th with the (3k+1)-th mod n), labelled with the set of
    their classes (``"0 7"``, or one class when both show it); ``out/{split}.csv``, ``out/images/<split>/*.png``."""
    for split in ("train", "val", "test"):
        images = sorted((folder / split).glob("*/*.png"))
        (out / "images" / split).mkdir(parents=True, exist_ok=True)
        lines = ["path,label"]
        for k, left in enumerate(images):
            right = images[(3 * k + 1) % len(images)]
            with Image.open(left) as a, Image.open(right) as b:
                pair = Image.new("RGB", (a.width + b.width, a.height))
                pair.paste(a.convert("RGB"), (0, 0))
                pair.paste(b.convert("RGB"), (a.width, 0))
            name = f"images/{split}/{k:03d}.png"
            pair.save(out / name)
            lines.append(f"{name},{' '.join(sorted({left.parent.name, right.parent.name}))}")
        (out / f"{split}.csv").write_text("\n".join(lines) + "\n")
    return out


def write_low_byte_set(root: Path, counts=(("train", 12), ("val", 4), ("test", 4)), size: int = 16,
                       colour: bool = False) -> Path:
    """16-bit images of two classes that differ in the low byte only: ``lr`` is darker on the left half
    (257 x 128 - 100) than on the right (257 x 128 + 100), ``rl`` the other way round, each pixel +-20 of noise.
    Read at 8 bits (``round(x / 257)``) every image is a flat 128; read at 16 bits the edge tells the classes
    apart. Train and val are PNG, test is TIFF. ``colour``: RGB images whose channels sit at 257 x (96, 128, 160)
    with the same edge, written by OpenCV (PNG) and tifffile (TIFF) since Pillow cannot write 16-bit colour; their
    test split alternates TIFF and PNG."""
    rng = np.random.default_rng(0)
    half = size // 2
    levels = (96, 128, 160) if colour else (128,)
    for split, n in counts:
        for name, sign in (("lr", 1), ("rl", -1)):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                image = np.tile(257 * np.array(levels, np.int64) + sign * 100, (size, size, 1))
                image[:, :half] -= 2 * sign * 100
                image = (image + rng.integers(-20, 21, image.shape)).astype(np.uint16)
                tiff = split == "test" and not (colour and i % 2)
                path = folder / f"{i:03d}.{'tif' if tiff else 'png'}"
                if colour:
                    path.write_bytes(encode_tiff16(image) if tiff else encode_png16(image))
                else:
                    Image.fromarray(image[..., 0]).save(path)
    return root


def photo16(rows: int = 32, cols: int = 43, alpha: bool = False) -> np.ndarray:
    """scikit-image's astronaut photo, subsampled to about ``rows x cols``, as 16-bit RGB(A) that 8 bits cannot
    hold: ``x * 257`` plus seeded noise 0..256 in the low byte (alpha: a seeded random plane)."""
    import skimage.data
    photo = skimage.data.astronaut()
    photo = photo[::photo.shape[0] // rows, ::photo.shape[1] // cols][:rows, :cols]
    rng = np.random.default_rng(0)
    wide = photo.astype(np.uint16) * 257 + rng.integers(0, 257, photo.shape).astype(np.uint16)
    if alpha:
        wide = np.concatenate([wide, rng.integers(0, 65536, (*wide.shape[:2], 1)).astype(np.uint16)], axis=-1)
    return wide


def encode_png16(rgb: np.ndarray) -> bytes:
    """An ``H x W x 3`` (or x 4, RGBA) uint16 array as a 16-bit PNG, written by OpenCV (BGR(A) order)."""
    import cv2
    ok, buffer = cv2.imencode(".png", rgb[..., [2, 1, 0, 3][:rgb.shape[-1]]])
    assert ok
    return buffer.tobytes()


def encode_tiff16(rgb: np.ndarray, **options) -> bytes:
    """An ``H x W x 3`` (or x 4: unassociated alpha) uint16 array as a 16-bit RGB TIFF written by tifffile;
    ``options`` go to ``tifffile.imwrite`` (compression, byteorder, planarconfig="separate": one plane per
    channel...)."""
    import tifffile
    buffer = io.BytesIO()
    extra = ["unassalpha"] if rgb.shape[-1] == 4 else []
    planes = np.moveaxis(rgb, -1, 0) if options.get("planarconfig") == "separate" else rgb
    tifffile.imwrite(buffer, planes, photometric="rgb", extrasamples=extra, **options)
    return buffer.getvalue()


def tiny_train_args(data: Path, out: Path, *extra: str, dataset: str = "folder") -> list[str]:
    """Flags for a fast training run on the tiny dataset."""
    return ["--train", "--data", str(data), "--dataset", dataset, "--arch", "resnet18",
            "--image_size", str(TINY_SIZE), str(TINY_SIZE), "-b", "8", "-j", "0", "--epochs", "2",
            "--lr", "0.05", "--warmup", "0", "--output", str(out), "--no_progress", *extra]


TIMING_KEYS = ("time", "img_per_s")  # metrics.json history values that differ between equal runs


def layout_train_args(data: Path, out: Path, dataset: str, tag: str | None = None) -> list[str]:
    """Flags of the run that compares layouts: simple_cnn, 2 epochs, seed 3, tagged ``tag`` (default: the layout)."""
    return ["--train", "--data", str(data), "--dataset", dataset, "--arch", "simple_cnn", "--image_size",
            str(TINY_SIZE), str(TINY_SIZE), "-b", "8", "-j", "0", "--epochs", "2", "--lr", "0.05", "--warmup", "0",
            "--seed", "3", "--output", str(out), "--tag", tag or dataset, "--no_progress"]


def run_history(run_dir: Path) -> list[dict]:
    """A finished run's metrics.json history without its timing values."""
    return [{k: v for k, v in row.items() if k not in TIMING_KEYS}
            for row in read_json(run_dir / "metrics.json")["history"]]


def assert_trains_like(reference: Path, run_dir: Path) -> float:
    """``run_dir`` trained exactly as ``reference`` (the same data, read through another layout: the same
    computation, so equal numbers) and got the same test top-1, which is returned."""
    assert len(run_history(run_dir)) == 2 and run_history(run_dir) == run_history(reference)
    top1 = read_json(run_dir / "metrics.json")["test"]["test_top1"]
    assert top1 == read_json(reference / "metrics.json")["test"]["test_top1"]
    return top1


def run_main(args: list[str]) -> int:
    """main.main(args) in this process; its exit code."""
    import main
    return main.main(args)


def read_json(path: Path):
    """The JSON file at ``path``, parsed."""
    return json.loads(Path(path).read_text())


def tiny_base(data: Path, **extra) -> dict:
    """A sweep file's base: simple_cnn on ``data`` at TINY_SIZE, one epoch, one process (``extra`` on top)."""
    return {"data": str(data), "arch": "simple_cnn", "image_size": [TINY_SIZE, TINY_SIZE], "batch_size": 8,
            "workers": 0, "epochs": 1, "warmup": 0, "lr": 0.05, **extra}


def main_process(*args: str, cwd: Path | None = None, timeout: int = 300, **env: str) -> subprocess.CompletedProcess:
    """``python main.py *args`` in a child process on one torch thread (``env`` added); its result."""
    return subprocess.run([sys.executable, str(ROOT / "main.py"), *args], cwd=cwd or ROOT, capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, "OMP_NUM_THREADS": "1", **env})


def main_command(args):
    """The argv of ``python main.py *args`` (for Popen)."""
    return [sys.executable, str(ROOT / "main.py"), *args]


def wait_for(path: Path, text: str, proc: subprocess.Popen, timeout: float = 240) -> None:
    """Wait until ``text`` appears in the file ``path`` while ``proc`` runs; fail if it ends first or time runs out."""
    end = time.time() + timeout
    while time.time() < end:
        if path.is_file() and text in path.read_text():
            return
        if proc.poll() is not None:
            raise AssertionError(f"the run ended (code {proc.returncode}) before {text!r} appeared in {path}")
        time.sleep(0.02)
    raise AssertionError(f"{text!r} never appeared in {path}")


# ---------------------------------------------------------------------------------------------- checks
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


def assert_same_weights(a: Path, b: Path) -> None:
    """The checkpoints ``a`` and ``b`` hold equal model tensors (exactly: the same computation)."""
    wa, wb = load_checkpoint(a)["model"], load_checkpoint(b)["model"]
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def file_tree(root: Path) -> set[str]:
    """Every path under ``root``, relative to it."""
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def hook_count(model: nn.Module) -> int:
    """How many forward/backward hooks ``model``'s modules hold (CAM methods must remove theirs)."""
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
               + len(m._backward_pre_hooks) for m in model.modules())


def peak_mb(code: str) -> tuple[float, str]:
    """Run ``code`` in a fresh Python (project importable) and return how far its peak resident memory rose
    above the peak before ``code`` started (after the imports), in MB, and its stdout."""
    prog = "\n".join([
        "import resource, sys",
        "import torch, torchvision, PIL.Image, dataloader, main  # the imports' own memory is not counted",
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss",
        textwrap.dedent(code),
        "print('PEAK_KB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before)",
    ])
    r = subprocess.run([sys.executable, "-c", prog], capture_output=True, text=True, timeout=300, cwd=ROOT,
                       env=project_env())
    assert r.returncode == 0, r.stderr[-3000:]
    peak = [line for line in r.stdout.splitlines() if line.startswith("PEAK_KB")][-1]
    return int(peak.split()[1]) / 1024, r.stdout


# --------------------------------------------------------------------------------------- files to read
def calibrated_checkpoint(run_dir: Path, arch: str, data: Path, image_size: int, **overrides) -> Path:
    """``run_dir/checkpoints/best.pth`` (beside ``run_dir/config.yaml``) in train.py's format: ``arch`` with random
    weights (seed 0) and batch-norm statistics of the training images; ``overrides`` set config values (criterion,
    eval_resize...)."""
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


def multi_label_checkpoint(run_dir: Path, data: Path, arch: str = "resnet18", image_size: int = 32,
                           thresholds: Sequence[float] = ()) -> Path:
    """``run_dir/checkpoints/best.pth`` of a multi-label ``arch`` (random weights, seed 0) for the csv set in
    ``data`` (a mosaic set: ``dataloader.digits.make_mosaic``), carrying its spec with ``thresholds`` (empty:
    0.5 each) as ``--train --multi_label --tune_thresholds`` saves it; no training."""
    from applications.setup.common import training_spec
    cfg = config.build_parser().parse_args(["--train", "--multi_label", "--dataset", "csv", "--data", str(data),
                                            "--arch", arch, "--image_size", str(image_size), str(image_size)])
    classes = read_class_names(data, "csv")
    spec = training_spec(cfg, classes)
    spec = type(spec).from_dict({**spec.to_dict(), "multi_label": True, "head": "bce",
                                 "thresholds": list(thresholds)})
    torch.manual_seed(0)
    model = create_model(arch, len(classes)).eval()
    path = run_dir / "checkpoints" / "best.pth"
    save_checkpoint({"model": model.state_dict(), "class_names": classes, "arch": arch, "model_spec": spec.to_dict(),
                     "config": config.config_to_dict(cfg)}, path)
    config.save_config(cfg, run_dir / "config.yaml")
    return path


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


def jpeg_copy(src, dst):
    """``src``'s PNG tree written as JPEGs (quality 90) under ``dst``; returns ``dst``."""
    from PIL import Image
    for png in src.rglob("*.png"):
        out = dst / png.relative_to(src).with_suffix(".jpg")
        out.parent.mkdir(parents=True, exist_ok=True)
        Image.open(png).save(out, quality=90)
    return dst


def write_run(folder: Path, config: dict, history: list[dict] | None = None, test: dict | None = None,
              log: str | None = None) -> Path:
    """A run folder as training leaves it (config.yaml, optional metrics.json and log.txt), without training."""
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    if history is not None:
        metrics = {"history": history, **({"test": test} if test else {})}
        (folder / "metrics.json").write_text(json.dumps(metrics))
    if log is not None:
        (folder / "log.txt").write_text(log)
    return folder


def sweep_file(tmp_path: Path, body: dict, name: str = "sweep.yaml") -> Path:
    """``body`` written as a sweep YAML file in ``tmp_path``; its path."""
    path = tmp_path / name
    path.write_text(yaml.safe_dump(body, sort_keys=False))
    return path


# ----------------------------------------------------------------------- weights in the library caches
def fake_weights(arch: str, seed: int = 1) -> dict[str, torch.Tensor]:
    """The architecture's own 1000-class state dict with known values: its initialisation under ``seed``,
    with batch-norm statistics moved off their initial 0 and 1 so that a change or a reset shows."""
    torch.manual_seed(seed)
    state = build_model(arch, 1000).state_dict()
    g = torch.Generator().manual_seed(seed)
    for k, v in state.items():
        if k.endswith("running_mean"):
            state[k] = torch.randn(v.shape, generator=g) * 0.1
        elif k.endswith("running_var"):
            state[k] = 1 + torch.rand(v.shape, generator=g) * 0.2
    return state


def put_in_cache(arch: str, home: Path) -> dict[str, torch.Tensor]:
    """Save ``fake_weights(arch)`` where the library's loader reads it, under TORCH_HOME / HF_HOME = ``home``
    (the environment must already point there); returns the saved tensors."""
    state = fake_weights(arch)
    weights = resolve_weights(arch, "imagenet")
    if arch.startswith("timm/"):  # the Hugging Face cache layout: refs/main names the snapshot
        from safetensors.torch import save_file
        repo = weights.cache_path.parent.parent.parent
        (repo / "refs").mkdir(parents=True, exist_ok=True)
        (repo / "refs" / "main").write_text("0123abcd")
        target = repo / "snapshots" / "0123abcd" / weights.cache_path.name
        target.parent.mkdir(parents=True)
        save_file({k: v.contiguous() for k, v in state.items()}, str(target))
        assert resolve_weights(arch, "imagenet").cache_path == target
    else:
        weights.cache_path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(state, weights.cache_path)
    return state


class _Payload:
    """Unpickling calls ``os.system`` (``touch`` a marker file): the issue's reproduction."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def write_malicious(path: Path, marker: Path) -> Path:
    """A torch.save file at ``path`` whose unpickling runs ``touch marker``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"conv1.weight": torch.zeros(1), "x": _Payload(marker)}, path)
    return path


# ---------------------------------------------------------------------------------------------- models
# One model per family at the smallest input it accepts (vit_b_16 and maxvit_t are built for 224 only).
ROUND_TRIP = {"alexnet": 64, "convnext_tiny": 32, "densenet121": 32, "efficientnet_b0": 32, "googlenet": 32,
              "inception_v3": 75, "maxvit_t": 224, "mnasnet0_5": 32, "mobilenet_v2": 32, "mobilenet_v3_small": 32,
              "regnet_x_400mf": 32, "resnet18": 32, "shufflenet_v2_x0_5": 32, "squeezenet1_1": 32, "swin_t": 32,
              "vgg11": 32, "vit_b_16": 224, "efficientnet-b0": 32, "resnest50": 32, "simple_cnn": 32}


def real_images(folder, size: int, n: int) -> torch.Tensor:
    """The first ``n`` PNGs under ``folder`` as a float batch resized to ``size`` x ``size``."""
    from torchvision.io import read_image
    files = sorted(folder.rglob("*.png"))[:n]
    images = torch.stack([read_image(str(f)).float() / 255 for f in files])
    return torch.nn.functional.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)


def train_one_step_and_save(name: str, images: torch.Tensor, path) -> torch.Tensor:
    """A seeded ``name`` model after one clipped SGD step, saved to ``path``; its eval logits on ``images``."""
    torch.manual_seed(0)
    model = create_model(name, num_classes=3)
    model.train()
    loss = torch.nn.functional.cross_entropy(model(images), torch.arange(len(images)) % 3)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)  # BN over 2 images of 1 x 1 maps: huge gradients
    torch.optim.SGD(model.parameters(), lr=0.01).step()
    save_checkpoint({"model": model.state_dict(), "arch": name, "epoch": 0}, path)
    with torch.no_grad():
        outputs = model.eval()(images)
    assert torch.isfinite(outputs).all()
    return outputs


# --------------------------------------------------------------- the deploy demo (demos/classifier.py)
DEMO = ROOT / "demos" / "classifier.py"


def demo_module():
    """demos/classifier.py imported in this process, to test its preprocessing functions directly."""
    spec = importlib.util.spec_from_file_location("demo_classifier", DEMO)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# Run the demo as a script, then list what it imported that it must not (run from a folder where the
# project is not importable, so an import of project code would fail anyway). torchvision is listed too: the
# demo imports it only for a 16-bit colour PNG (which Pillow reads at 8 bits).
DEMO_WRAPPER = r"""
import json, runpy, sys
demo, *args = sys.argv[1:]
sys.argv = [demo, *args]
code = 0
try:
    runpy.run_path(demo, run_name="__main__")
except SystemExit as e:
    code = e.code or 0
banned = ("torchvision", "timm", "config", "main", "models", "dataloader", "applications", "utils", "criterions",
          "optim")
print("IMPORTED " + json.dumps(sorted({m.split(".")[0] for m in sys.modules} & set(banned))), file=sys.stderr)
sys.exit(code)
"""


def run_demo(args: list[str], cwd: Path) -> tuple[subprocess.CompletedProcess, list[str]]:
    """The deploy demo run in a child that records which project modules it imported (none expected)."""
    proc = subprocess.run([sys.executable, "-c", DEMO_WRAPPER, str(DEMO), *args], capture_output=True, text=True,
                          cwd=cwd, timeout=300)
    imported = json.loads(proc.stderr.strip().splitlines()[-1].removeprefix("IMPORTED "))
    return proc, imported


def demo_predictions(model: Path, images: Path, cwd: Path) -> dict[str, int]:
    """The demo's top-1 class per image path (the demo must import no project module)."""
    proc, imported = run_demo([str(model), str(images), "--json", "--topk", "1"], cwd=cwd)
    assert proc.returncode == 0 and imported == [], proc.stderr[-3000:]
    return {str(Path(r["path"]).resolve()): int(np.argmax(r["probabilities"]))
            for r in map(json.loads, proc.stdout.splitlines())}


# ------------------------------------------------------------------- the HTTP service (demos/serve.py)
SERVE = ROOT / "demos" / "serve.py"


class Served:
    """A running demos/serve.py: its base ``url``, its process, and (once stopped) what it imported that the
    demo must not (``imported``) and its stderr."""

    def __init__(self, proc: subprocess.Popen, url: str):
        self.proc, self.url, self.imported, self.stderr = proc, url, None, ""

    def health(self) -> dict:
        import requests
        return requests.get(self.url + "/health", timeout=30).json()


@contextlib.contextmanager
def serving(model: Path, *args: str, cwd: Path, timeout: float = 180):
    """demos/serve.py ``model *args`` started on a free port of 127.0.0.1 in a child process (through the
    demo's import-recording wrapper, from ``cwd`` where the project is not importable), waited for until
    ``/health`` answers; stopped with SIGINT (uvicorn's graceful shutdown) on exit."""
    import requests
    url = f"http://127.0.0.1:{(port := free_port())}"
    proc = subprocess.Popen([sys.executable, "-c", DEMO_WRAPPER, str(SERVE), str(model), "--port", str(port), *args],
                            cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    served = Served(proc, url)
    try:
        end = time.time() + timeout
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"serve.py ended (code {proc.returncode}): {proc.stderr.read()[-3000:]}")
            try:
                if requests.get(url + "/health", timeout=5).status_code == 200:
                    break
            except requests.ConnectionError:
                assert time.time() < end, f"serve.py did not answer /health within {timeout} s"
                time.sleep(0.2)
        yield served
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
        try:
            _, served.stderr = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, served.stderr = proc.communicate()
        last = served.stderr.strip().splitlines()[-1:] or [""]
        if last[0].startswith("IMPORTED "):
            served.imported = json.loads(last[0].removeprefix("IMPORTED "))


# ----------------------------------------------------------------------------- benchmarks/gpu_check.py
def run_gpu_check(*args: str, timeout: float = 1500, cwd=ROOT) -> subprocess.CompletedProcess:
    """``benchmarks/gpu_check.py *args`` in a child process; its result."""
    return subprocess.run([sys.executable, str(ROOT / "benchmarks/gpu_check.py"), *args], cwd=cwd,
                          capture_output=True, text=True, timeout=timeout)


# ---- the strategies sweep's variants, built as --train builds them (test_sweep_variants, test_training_parts)
STRATEGIES = ROOT / "z_task_shell/configs/strategies.yaml"


def strategy_variant_cfg(tag: str, data: Path, out: Path) -> argparse.Namespace:
    """The ``--train`` config of variant ``tag`` on ``data`` (class folders), its flags checked as the sweep
    checks them, writing under ``out``; on the CPU."""
    spec = load_sweep(STRATEGIES)
    (variant,) = select_variants(spec, [tag])
    tiny = {"data": str(data), "arch": "simple_cnn", "image_size": [TINY_SIZE, TINY_SIZE],
            "batch_size": 8, "workers": 0, "epochs": 1, "warmup": 0, "device": "cpu"}
    flags = run_flags({**spec.base, **tiny}, variant.values, out, tag)  # main.py's checks, as the sweep runs them
    cfg = argparse.Namespace(**{**vars(config.build_parser().parse_args([])), **flags, "train": True})
    validate(cfg)  # the values main.py resolves (an unset --criterion: the task's own)
    return cfg


def strategy_variant_parts(tag: str, data: Path, out: Path) -> tuple[argparse.Namespace, TrainingParts]:
    """The config of variant ``tag`` (see :func:`strategy_variant_cfg`) and its parts from the one builder."""
    cfg = strategy_variant_cfg(tag, data, out)
    return cfg, build_training_parts(cfg, read_class_names(data, "folder"), DistInfo(), lr=cfg.lr)


PAIR_CLASSES = ["0", "1", "7"]  # the label classes of write_pair_set's csv


def save_pair_model(path: Path, data: Path, *, multi_label: bool = True, thresholds=()) -> Path:
    """A random simple_cnn (seed 0) for PAIR_CLASSES (write_pair_set's classes) as training saves it: weights,
    config, spec (``thresholds``)."""
    args = ["--train", "--arch", "simple_cnn", "--dataset", "csv", "--data", str(data), "--image_size", "16", "32"]
    cfg = config.build_parser().parse_args(args + (["--multi_label"] if multi_label else []))
    cfg.criterion = "bce" if multi_label else cfg.criterion
    torch.manual_seed(0)
    model = create_model("simple_cnn", len(PAIR_CLASSES))
    spec = replace(ModelSpec.from_config(config.config_to_dict(cfg), PAIR_CLASSES), thresholds=tuple(thresholds))
    save_checkpoint({"model": model.state_dict(), "class_names": PAIR_CLASSES, "arch": "simple_cnn",
                     "config": config.config_to_dict(cfg), "model_spec": spec.to_dict()}, path)
    config.save_config(cfg, path.parent.parent / "config.yaml")  # a run directory, as training leaves it
    return path


def launch(args, nproc=2, legacy=False, env=None, **kw):
    """torchrun (or the legacy launcher) running main.py with ``args`` on ``nproc`` processes (``env`` added)."""
    runner = ["-m", "torch.distributed.launch", f"--nproc_per_node={nproc}", f"--master_port={free_port()}"] \
        if legacy else ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run([sys.executable, *runner, "main.py", *args], cwd=ROOT, capture_output=True, text=True,
                          env=env, timeout=600, **kw)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
