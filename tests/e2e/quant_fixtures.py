"""Shared by tests/e2e/test_quantize.py and tests/e2e/test_openvino.py: a small resnet18 really trained on real
digits at 32 px (three classes), its fp32 --evaluation predictions, and helpers to read exports; and a harder
model to quantize (:func:`rough_once`)."""
from __future__ import annotations

import contextlib
import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from helpers import ROOT, read_json, run_main, tiny_train_args, write_digit_folders

SIZE = 32
COUNTS = {"train": 30, "val": 6, "test": 20}


_TRAINED: dict[str, dict[str, Path]] = {}


def trained_once(tmp_path_factory) -> dict[str, Path]:
    """:func:`train_digits_model`, run once per test session (both test files use the same model)."""
    if "model" not in _TRAINED:
        _TRAINED["model"] = train_digits_model(tmp_path_factory.mktemp("int8"))
    return _TRAINED["model"]


def train_digits_model(root: Path) -> dict[str, Path]:
    """Train resnet18 for a few epochs on 3 x 30 digits at 32 px; return the data, the checkpoint, the run."""
    data = write_digit_folders(root / "digits", counts=COUNTS, size=SIZE)
    out = root / "out"
    with contextlib.redirect_stdout(io.StringIO()):
        assert run_main(tiny_train_args(data, out, "--image_size", str(SIZE), str(SIZE), "--epochs", "6",
                                        "--lr", "0.02", "--tag", "int8")) == 0
    run = out / "resnet18" / "int8"
    return {"data": data, "ckpt": run / "checkpoints" / "best.pth", "run": run, "export": run / "export"}


def rough_once(tmp_path_factory) -> dict[str, Path]:
    """:func:`train_rough_model`, run once per test session."""
    if "rough" not in _TRAINED:
        _TRAINED["rough"] = train_rough_model(tmp_path_factory.mktemp("rough"))
    return _TRAINED["rough"]


def train_rough_model(root: Path, seed: int = 1) -> dict[str, Path]:
    """benchmarks/int8_onnx_variants.py's hard model: resnet18 trained ONE epoch at lr 0.1 on all 1,797 digits
    at 32 px (main.py in its own process; about 15 s of one core). Its batch-norm statistics are rough: a
    few images get logits in the hundreds, most a few units, the case int8 logits broke (seed 1: ONNX
    Runtime's default QDQ lost 18.9 points, 7.8 under ONEDNN_MAX_CPU_ISA=AVX2; docs/export_int8_openvino.md)."""
    from benchmarks.int8_onnx_variants import BATCH, LR, RECIPE
    from dataloader.digits import make_digits
    data = make_digits(root / "digits")
    out = root / "out"
    run_main_json(["--train", "--data", str(data), *RECIPE, "--lr", str(LR), "-b", str(BATCH), "--seed", str(seed),
                   "--output", str(out), "--tag", "rough", "--no_progress"])
    run = out / "resnet18" / "rough"
    return {"data": data, "ckpt": run / "checkpoints" / "best.pth", "run": run, "export": run / "export"}


def run_main_json(args: list[str]) -> dict:
    """main.py in its own process (OpenVINO and NNCF are kept out of the test process, whose threads and
    allocations they may not share safely); its printed JSON result."""
    proc = subprocess.run([sys.executable, str(ROOT / "main.py"), *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout[proc.stdout.index("{"):])


def evaluation_predictions(trained: dict[str, Path]) -> dict[str, int]:
    """``--evaluation``'s prediction of every test image, by resolved path."""
    out = trained["run"] / "preds.json"
    with contextlib.redirect_stdout(io.StringIO()):
        assert run_main(["--evaluation", "--resume", str(trained["ckpt"]), "-j", "0", "--no_progress",
                         "--out", str(out)]) == 0
    return {str(Path(p["path"]).resolve()): p["prediction"] for p in read_json(out)}


def constant_calibration_data(trained: dict[str, Path], root: Path) -> Path:
    """The same data, except that every training image is one constant grey image: a broken calibration set."""
    data = root / "constant"
    shutil.copytree(trained["data"], data)
    for path in (data / "train").rglob("*.png"):
        Image.fromarray(np.full((SIZE, SIZE, 3), 128, np.uint8)).save(path)
    return data
