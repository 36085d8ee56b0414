"""What every section of ``benchmarks/gpu_check.py`` shares: the run profiles (full and ``--quick``), the
record a section process writes, its context (``Ctx``), and the bundled-digits training runs."""
from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from benchmarks.make_photo_set import SOURCES
from benchmarks.time_to_accuracy import RECIPE
from utils.atomic import write_json_atomic

ROOT = Path(__file__).resolve().parent.parent.parent
NO_CUDA = "skipped: no CUDA"
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
ANCHORS = [
    {"gpu": "A100", "resnet50_amp_train_img_s": "about 2,500", "source": "NVIDIA's published figure"},
    {"gpu": "H100", "resnet50_amp_train_img_s": "2,600-2,800", "source": "public benchmark runs"},
]
ANCHOR_TEXT = "; ".join(f"{a['gpu']} {a['resnet50_amp_train_img_s']} img/s ({a['source']})" for a in ANCHORS)
ANCHOR_SHORT = "resnet50: " + " / ".join(f"{a['gpu']} {a['resnet50_amp_train_img_s']}" for a in ANCHORS)


@dataclass(frozen=True)
class Profile:
    """Sizes of one kind of run: the full GPU check or the tiny CPU smoke run (``--quick``)."""
    name: str
    boxes: dict[str, float]  # seconds per section
    digits_arch: str = "resnet18"
    digits_size: int = 32
    digits_batch: int = 64
    epochs: int = 8
    band_enforced: bool = True
    bench_arch: str = "resnet50"  # the side-by-side model: ours and the plain loop, and timm's of the same name
    r50_size: int = 224
    r50_batch: int = 256
    r50_batches: int = 8  # distinct synthetic batches (one epoch)
    r50_epochs: int = 4  # timed epochs, after one warm-up epoch
    photos_per_class: int = 250
    photo_classes: int = len(SOURCES)
    photo_size: int = 224
    photo_batch: int = 256
    photo_arch: str = "resnet50"
    workers: int | None = None  # None: the available cores


FULL = Profile("full", boxes={"context": 20, "precision": 180, "resnet50": 90, "input_path": 130, "ddp": 50})
QUICK = Profile("quick", boxes={"context": 120, "precision": 400, "resnet50": 200, "input_path": 200, "ddp": 200},
                digits_arch="simple_cnn", digits_size=16, digits_batch=8, epochs=1, band_enforced=False,
                bench_arch="resnet18", r50_size=32, r50_batch=4, r50_batches=1, r50_epochs=1, photos_per_class=8,
                photo_classes=4, photo_size=64, photo_batch=8, photo_arch="simple_cnn", workers=1)
SECTIONS = ("context", "precision", "resnet50", "input_path", "ddp")
TITLES = {"context": "Context", "precision": "CUDA tests and precision paths (bundled digits)",
          "resnet50": "resnet50 side by side (synthetic uint8 batches)",
          "input_path": "Input path (photo-set JPEGs, cached digits)", "ddp": "torchrun, one process"}


@dataclass
class Record:
    """A section's result (status, rows, notes), rewritten to ``path`` whenever it grows."""
    path: Path
    data: dict[str, Any] = field(default_factory=lambda: {"status": "running", "rows": [], "notes": []})

    def write(self) -> None:
        write_json_atomic(self.path, self.data, indent=2, default=str)

    def row(self, **values: Any) -> dict[str, Any]:
        self.data["rows"].append(values)
        self.write()
        return values

    def note(self, text: str) -> None:
        self.data["notes"].append(text)
        self.write()


@dataclass
class Ctx:
    """What a section needs: its profile, paths, device and its record."""
    prof: Profile
    args: argparse.Namespace
    rec: Record
    deadline: float

    @property
    def cuda(self) -> bool:
        import torch
        return torch.cuda.is_available()

    @property
    def device(self):
        import torch
        return torch.device("cuda" if self.cuda else "cpu")

    def left(self) -> float:
        return max(1.0, self.deadline - time.time())

    def workers(self) -> int:
        from config import available_cores
        return self.prof.workers if self.prof.workers is not None else available_cores()

    def sync(self) -> None:
        import torch
        if self.cuda:
            torch.cuda.synchronize()

    def cuda_only(self, value: Callable[[], Any]) -> Any:
        return value() if self.cuda else NO_CUDA


def finite(x: float) -> float:
    if not math.isfinite(x):
        raise FloatingPointError(f"a measurement came out as {x}")
    return x


def digits_root(ctx: Ctx) -> Path:
    """``--digits``; the bundled digits are built when the default path is missing."""
    path = ctx.args.digits
    if not (path / "train").is_dir():
        if path.resolve() != (ROOT / "data" / "digits").resolve():
            raise FileNotFoundError(f"--digits {path} has no train/ folder; point it at a class-folder dataset "
                                    f"(e.g. data/digits, made by utils/make_digits.py)")
        subprocess.run([sys.executable, str(ROOT / "utils" / "make_digits.py"), "--out", str(path)], check=True)
    return path


def digits_train_args(ctx: Ctx, out: Path, tag: str, epochs: int) -> list[str]:
    """``main.py --train`` flags: the quickstart recipe (decoded once, cached on the device) without its
    channels-last, at the profile's model, size and batch."""
    import yaml

    from config import read_config_file
    recipe = read_config_file(RECIPE)
    recipe.pop("channels_last", None)
    path = out / "digits_recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    p = ctx.prof
    return ["--train", "--config", str(path), "--data", str(digits_root(ctx)), "--arch", p.digits_arch,
            "--image_size", str(p.digits_size), str(p.digits_size), "-b", str(p.digits_batch), "--epochs",
            str(epochs), *(["--warmup", "0"] if epochs < 2 else []), "-j", str(min(2, ctx.workers())),
            "--output", str(out), "--tag", tag, "--no_progress"]


def run_summary(out: Path, arch: str, tag: str) -> dict[str, Any]:
    metrics = json.loads((out / arch / tag / "metrics.json").read_text())
    return {"test_top1": metrics["test"]["test_top1"], "best_val_top1": metrics["test"]["best_val_top1"],
            "train_img_s": finite(metrics["history"][-1]["img_per_s"])}


def last_error(output: str) -> str:
    """The line of a process's output that says what went wrong: main.py's one-line error when there is
    one (torchrun's own traceback follows it), else the last line naming an error, else the last line."""
    lines = [line.strip() for line in output.strip().splitlines() if line.strip()]
    for marks in (("ERROR main:", "main.py: error:"), ("Error", "ERROR")):
        found = [line for line in lines if any(m in line for m in marks)]
        if found:
            return found[-1][-400:]
    return (lines or ["(no output)"])[-1][-400:]
