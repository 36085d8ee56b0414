"""``--jit`` / ``--onnx``: export a checkpoint as a self-describing, verified TorchScript or ONNX file.

    python main.py --jit  --resume output/resnet18/default/checkpoints/best.pth   # -> <run>/export/model_jit.pt
    python main.py --onnx --resume output/resnet18/default/checkpoints/best.pth   # -> <run>/export/model.onnx

The export is made on the CPU in fp32 and carries the class names, input size, resize mode, mean/std
and head (``export.core.export_metadata``). Before it is reported, the written file is loaded back
the way consumers load it and run on a few real images of ``--eval_split`` (batched, and one alone to
check the dynamic batch axis); its logits must match the eager model's within 1e-4 (for a model whose
own fp32 logits are less exact than that: be at most twice as far from float64 logits as eager is; see
``export.core.verify_export``). A file that fails is left as ``<name>.unverified`` and the run fails
with the difference.
"""
from __future__ import annotations

import argparse
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn as nn

from config import selected_mode
from models import model_family
from export.core import (ExportError, Runner, choose_opset, export_metadata, export_onnx, onnx_runner,
                          prepare_for_export, save_torchscript, to_torchscript, torchscript_runner, verify_export)
from utils.misc import log_to_file

from .common import Restored, build_dataset, checkpoint_run_dir, preprocessor, restore_for_inference

logger = logging.getLogger(__name__)

VERIFY_IMAGES = 8


@dataclass(frozen=True)
class ExportFormat:
    """One export path: its file name, how to write it and how consumers run it."""
    name: str
    filename: str
    alternative: str  # the other mode flag, suggested when this path fails
    write: Callable[[nn.Module, torch.Tensor, Path, dict[str, Any], argparse.Namespace], dict[str, Any]]
    runners: Callable[[Path], dict[str, Runner]]


def _write_torchscript(model: nn.Module, example: torch.Tensor, path: Path, metadata: dict[str, Any],
                       cfg: argparse.Namespace) -> dict[str, Any]:
    module, method = to_torchscript(model, example)
    save_torchscript(module, path, metadata)
    return {"method": method}


def _write_onnx(model: nn.Module, example: torch.Tensor, path: Path, metadata: dict[str, Any],
                cfg: argparse.Namespace) -> dict[str, Any]:
    opset = choose_opset(cfg.opset)
    export_onnx(model, example, path, metadata, opset)
    return {"opset": opset}


FORMATS: dict[str, ExportFormat] = {
    "jit": ExportFormat("TorchScript", "model_jit.pt", "--onnx", _write_torchscript,
                        lambda p: {"as saved": torchscript_runner(p, optimize=False),
                                   "optimised on load": torchscript_runner(p, optimize=True)}),
    "onnx": ExportFormat("ONNX", "model.onnx", "--jit", _write_onnx, lambda p: {"onnxruntime": onnx_runner(p)}),
}


def run(cfg: argparse.Namespace) -> dict[str, Any]:
    """Export ``--resume`` in the format of the mode flag (``--jit`` or ``--onnx``) to ``<run_dir>/export/``."""
    run_dir = checkpoint_run_dir(cfg.resume)
    with log_to_file(run_dir / "log.txt"):
        return export_checkpoint(cfg, FORMATS[selected_mode(cfg)], run_dir / "export")


def sample_images(cfg: argparse.Namespace, restored: Restored, split: str, count: int = VERIFY_IMAGES) -> torch.Tensor:
    """``count`` images spread evenly over ``split``, preprocessed as evaluation does (float, on the CPU)."""
    dataset = build_dataset(cfg, split, restored.class_names, train=False, fallback=True, spec=restored.spec)
    n = min(count, len(dataset))
    picks = sorted(set(torch.linspace(0, len(dataset) - 1, n).round().long().tolist()))
    batch = torch.stack([dataset[i][0] for i in picks])
    return preprocessor(restored.spec, torch.device("cpu"))(batch)


def export_checkpoint(cfg: argparse.Namespace, fmt: ExportFormat, out_dir: Path) -> dict[str, Any]:
    """Write ``fmt``'s file for the checkpoint ``cfg.resume`` into ``out_dir``, verify it, return a summary."""
    restored = restore_for_inference(argparse.Namespace(**{**vars(cfg), "device": "cpu"}))
    arch = restored.spec.arch
    family = model_family(arch)
    model = prepare_for_export(restored.model, family)
    images = sample_images(cfg, restored, cfg.eval_split)
    path = out_dir / fmt.filename
    staging = path.with_name(path.name + ".unverified")
    try:
        info = fmt.write(model, images[:2], staging, export_metadata(restored.spec), cfg)
        runners = fmt.runners(staging)
        with torch.no_grad():
            for runner in runners.values():
                runner(images[:1])  # fails here, not in the verification, when the runtime cannot run the file
    except ExportError:
        raise
    except Exception as e:  # any exporter or runtime failure: say which path failed and offer the other
        staging.unlink(missing_ok=True)
        reason = (str(e).strip().splitlines() or [""])[0][:300]
        raise ExportError(f"{arch} ({family} family) cannot be exported to {fmt.name}: {type(e).__name__}: "
                          f"{reason}; try {fmt.alternative} instead") from e
    checks = {}
    for how, runner in runners.items():
        checks[how] = verify_export(f"the {fmt.name} export {staging} ({how})", model, runner, images)
        logger.info("%s export, %s: max |logit difference| from eager %.3g on %d images (max |logit| %.3g)",
                    fmt.name, how, checks[how]["max_abs_diff"], len(images), checks[how]["max_abs_logit"])
    worst = max(checks.values(), key=lambda c: c["max_abs_diff"])
    os.replace(staging, path)
    logger.info("wrote %s (%s, %s, %d classes, input %s)", path, arch, fmt.name, len(restored.class_names),
                "x".join(map(str, restored.spec.image_size)))
    return {"format": fmt.name, "path": str(path), "arch": arch, "family": family,
            "verified_images": len(images), **worst, **info}
