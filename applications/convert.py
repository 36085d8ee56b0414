"""``--jit`` / ``--onnx`` / ``--openvino``: export a checkpoint as a self-describing, verified TorchScript,
ONNX or OpenVINO IR file, and with ``--quantize int8`` also its int8 version behind an accuracy guard.

    python main.py --jit  --resume output/resnet18/default/checkpoints/best.pth   # -> <run>/export/model_jit.pt
    python main.py --onnx --resume output/resnet18/default/checkpoints/best.pth   # -> <run>/export/model.onnx
    python main.py --openvino --resume ...                     # -> <run>/export/model.xml + model.bin
    python main.py --onnx --quantize int8 --resume ...         # -> also <run>/export/model.int8.onnx
    python main.py --openvino --quantize int8 --resume ...     # -> also <run>/export/model.int8.xml + .bin
    python main.py --onnx --half --resume ...                  # -> <run>/export/model.fp16.onnx
    python main.py --triton --resume ...                       # -> <run>/export/triton/<arch>/config.pbtxt, ...

The export is made on the CPU in fp32 and carries the class names, input size, resize mode, mean/std
and head, and for a multi-label model its per-class decision thresholds (``export.core.export_metadata``).
Before it is reported, the written file is loaded back the way consumers load it and run on a few real
images of ``--eval_split`` (batched, and one alone to check the dynamic batch axis); its logits must match
the eager model's within 1e-3 x max(1, max |logit|) (for a model whose own fp32 logits are less exact than
that: within 20x eager's own distance from float64 logits; see ``export.core.logit_bound``). A file that
fails is left as ``<name>.unverified`` and the run fails with the difference.

An int8 file is made from the verified fp32 one, calibrated on ``--calib_images`` training images
through the evaluation preprocessing (``export.quantize``, ``export.openvino``). It computes an
approximation, so it is not held to a logit tolerance but to accuracy: the fp32 and the int8 file are
evaluated on ``--eval_split`` (all of it, or ``--verify_images`` images spread over it) and the int8
top-1 (mAP for a multi-label model) may be at most ``--max_accuracy_drop`` points lower (``export.guard``);
otherwise it is left as ``model.int8.onnx.unverified`` (``model.int8.unverified.xml``) and the run fails with
both numbers.

``--onnx --half`` writes ``model.fp16.onnx``: the model computing in float16 between a float32 input and float32
logits (``export.core.Fp16Graph``), about half the size of ``model.onnx``, for GPU runtimes; it is verified in
ONNX Runtime on the CPU like the fp32 file, within the fp16 bound: 1e-2 x max(1, max |logit|) (``FP16_RTOL``) or,
where larger, 4x the eager model's own distance from its torch fp16 logits (``export.core.Fp16Graph`` says why),
with eager's top-1; ONNX Runtime on the CPU computes mostly in fp32 (it casts around Conv/Gemm), so this checks
the fp16 weights and graph, and a model whose torch fp16 logits overflow (inf/NaN) is refused.

``--triton`` writes a Triton model repository, ``<run>/export/triton/<name>/`` (``config.pbtxt``, ``labels.txt``,
``1/model.onnx``), around the verified ONNX export (fp16 with ``--half``); ``export.triton`` says what it holds.

Temporary files and scratch folders are made in the export folder and named after their file with the
writer's pid (``utils.atomic.temp_path``, ``temp_dir``); an export first removes those of processes that
are gone (what a killed export left), never a running one's.
"""
from __future__ import annotations

import argparse
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
import torch.nn as nn

from config import selected_mode
from export.core import (
    FLOAT64,
    FP16,
    FP16_RTOL,
    RTOL,
    ExportError,
    Fp16Graph,
    Runner,
    choose_opset,
    export_metadata,
    export_onnx,
    onnx_runner,
    prepare_for_export,
    save_torchscript,
    to_torchscript,
    torchscript_runner,
    verify_export,
)
from export.guard import METRIC_NAMES, check_accuracy_drop, compare_accuracy, report_metric
from models import model_family
from utils.atomic import remove_stale_temporaries, temp_dir
from utils.misc import log_to_file

from .setup.common import (
    Restored,
    averaged_model,
    build_dataset,
    checkpoint_run_dir,
    preprocessor,
    restore_for_inference,
)

logger = logging.getLogger(__name__)

VERIFY_IMAGES = 8
GUARD_BATCH = 32  # images per forward pass of the accuracy guard

Quantizer = Callable[[Path, Path, np.ndarray, str, dict[str, Any], str], dict[str, Any]]


def _unverified(path: Path) -> Path:
    return path.with_name(path.name + ".unverified")


def _remove(path: Path) -> None:
    path.unlink(missing_ok=True)


@dataclass(frozen=True)
class ExportFormat:
    """One export path: its file name, how to write it and how consumers run it; for formats with an int8
    version, its file name and how to quantize the fp32 file. A file is written under its ``unverified``
    name and ``move``d to its own once verified (an OpenVINO IR is two files)."""
    name: str
    filename: str
    alternative: str  # the other mode flag, suggested when this path fails
    write: Callable[[nn.Module, torch.Tensor, Path, dict[str, Any], argparse.Namespace], dict[str, Any]]
    runners: Callable[[Path], dict[str, Runner]]
    int8_filename: str | None = None
    quantize: Quantizer | None = None
    unverified: Callable[[Path], Path] = _unverified
    move: Callable[[Path, Path], None] = os.replace
    remove: Callable[[Path], None] = _remove


def _write_torchscript(model: nn.Module, example: torch.Tensor, path: Path, metadata: dict[str, Any],
                       cfg: argparse.Namespace) -> dict[str, Any]:
    module, method = to_torchscript(model, example)
    save_torchscript(module, path, metadata)
    return {"method": method}


def _write_onnx(model: nn.Module, example: torch.Tensor, path: Path, metadata: dict[str, Any],
                cfg: argparse.Namespace) -> dict[str, Any]:
    opset = choose_opset(cfg.opset)
    fp16 = {"precision": "fp16"} if getattr(cfg, "half", False) else {}  # float16 inside, float32 in and out
    export_onnx(Fp16Graph(model) if fp16 else model, example, path, {**metadata, **fp16}, opset)
    return {"opset": opset, **fp16}


def _write_openvino(model: nn.Module, example: torch.Tensor, path: Path, metadata: dict[str, Any],
                     cfg: argparse.Namespace) -> dict[str, Any]:
    from export.openvino import onnx_to_ir
    with temp_dir(path) as scratch:  # through the ONNX file: the converter's most travelled road, and --onnx's graph
        onnx_path = scratch / "model.onnx"
        info = _write_onnx(model, example, onnx_path, metadata, cfg)
        onnx_to_ir(onnx_path, path, metadata)
    return info


def _openvino_runners(path: Path) -> dict[str, Runner]:
    from export.openvino import openvino_runner
    return {"openvino": openvino_runner(path)}


def _quantize_onnx(*args: Any) -> dict[str, Any]:
    from export.quantize import quantize_onnx
    return quantize_onnx(*args)


def _quantize_ir(*args: Any) -> dict[str, Any]:
    from export.openvino import quantize_ir
    return quantize_ir(*args)


def _ir_unverified(path: Path) -> Path:
    return path.with_name(f"{path.stem}.unverified.xml")  # OpenVINO finds the .bin by the .xml's stem


def _move_ir(src: Path, dst: Path) -> None:
    from export.openvino import move_ir
    move_ir(src, dst)


def _remove_ir(path: Path) -> None:
    from export.openvino import remove_ir
    remove_ir(path)


FORMATS: dict[str, ExportFormat] = {
    "jit": ExportFormat("TorchScript", "model_jit.pt", "--onnx", _write_torchscript,
                        lambda p: {"as saved": torchscript_runner(p, optimize=False),
                                   "optimised on load": torchscript_runner(p, optimize=True)}),
    "onnx": ExportFormat("ONNX", "model.onnx", "--jit", _write_onnx, lambda p: {"onnxruntime": onnx_runner(p)},
                         int8_filename="model.int8.onnx", quantize=_quantize_onnx),
    "openvino": ExportFormat("OpenVINO", "model.xml", "--onnx", _write_openvino, _openvino_runners,
                             int8_filename="model.int8.xml", quantize=_quantize_ir, unverified=_ir_unverified,
                             move=_move_ir, remove=_remove_ir),
}
FP16_FILENAME = "model.fp16.onnx"  # --onnx --half


def run(cfg: argparse.Namespace) -> dict[str, Any]:
    """Export ``--resume`` in the format of the mode flag (``--jit``, ``--onnx``, ``--openvino``; ``--triton``: a
    model repository in ``export/triton/``) to ``<run_dir>/export/``, and with ``--quantize int8`` its int8 version
    too."""
    run_dir = checkpoint_run_dir(cfg.resume, cfg.output, cfg.arch)
    mode = selected_mode(cfg)
    with log_to_file(run_dir / "log.txt"):
        restored = restore_for_inference(cfg, torch.device("cpu"))
        if mode == "triton":
            return triton_export(cfg, run_dir / "export" / "triton", restored)
        fmt = FORMATS[mode]
        summary = export_checkpoint(cfg, fmt, run_dir / "export", restored,
                                    filename=FP16_FILENAME if getattr(cfg, "half", False) else None)
        if getattr(cfg, "quantize", "none") == "int8":
            summary["int8"] = quantize_export(cfg, fmt, Path(summary["path"]), restored)
        return summary


def _spread(count: int | None, size: int) -> list[int]:
    """``count`` indices spread evenly over ``range(size)`` (all of them for ``None``)."""
    if count is None or count >= size:
        return list(range(size))
    return sorted(set(torch.linspace(0, size - 1, count).round().long().tolist()))


def sample_images(cfg: argparse.Namespace, restored: Restored, split: str,
                  count: int | None = VERIFY_IMAGES) -> torch.Tensor:
    """``count`` images spread evenly over ``split`` (all for ``None``), preprocessed as evaluation does
    (float, on the CPU)."""
    dataset = build_dataset(cfg, split, restored.class_names, train=False, fallback=True, spec=restored.spec)
    batch = torch.stack([dataset[i][0] for i in _spread(count, len(dataset))])
    return preprocessor(restored.spec, torch.device("cpu"))(batch)


def labelled_batches(cfg: argparse.Namespace, restored: Restored, split: str, count: int | None,
                     batch_size: int = GUARD_BATCH) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """``(images, targets)`` batches of ``count`` images spread evenly over ``split`` (all for ``None``),
    preprocessed as evaluation does; read batch by batch, so a large split never sits in memory. Targets are
    class indices (``N``), or for a multi-label model multi-hot rows (``N x K``)."""
    dataset = build_dataset(cfg, split, restored.class_names, train=False, fallback=True, spec=restored.spec)
    normalise = preprocessor(restored.spec, torch.device("cpu"))
    picks = _spread(count, len(dataset))
    for start in range(0, len(picks), batch_size):
        items = [dataset[i] for i in picks[start:start + batch_size]]
        yield normalise(torch.stack([item[0] for item in items])), torch.stack([torch.as_tensor(item[1])
                                                                                for item in items])


def export_checkpoint(cfg: argparse.Namespace, fmt: ExportFormat, out_dir: Path,
                      restored: Restored | None = None, filename: str | None = None) -> dict[str, Any]:
    """Write ``fmt``'s file (named ``filename``, default the format's) for the checkpoint ``cfg.resume``
    (``restored``, loaded on the CPU when not given) into ``out_dir``, verify it (an fp16 file, ``--half``,
    within ``FP16_RTOL``), return a summary."""
    restored = restored or restore_for_inference(cfg, torch.device("cpu"))
    arch = restored.spec.arch
    family = model_family(arch)
    model = averaged_model(cfg, prepare_for_export(restored.model, family), restored.spec)  # --tta hflip: folded in
    images = sample_images(cfg, restored, cfg.eval_split)
    if out_dir.is_dir():  # what killed exports left (of processes that are gone: another export may be running)
        remove_stale_temporaries(out_dir, dead_owners_only=True)
    path = out_dir / (filename or fmt.filename)
    staging = fmt.unverified(path)
    rtol, reference = (FP16_RTOL, FP16) if getattr(cfg, "half", False) else (RTOL, FLOAT64)
    try:
        tta = getattr(cfg, "tta", None)  # the views folded into the graph: its outputs average their probabilities
        metadata = {**export_metadata(restored.spec), **({"tta": " ".join(tta)} if tta else {})}
        info = fmt.write(model, images[:2], staging, metadata, cfg)
        runners = fmt.runners(staging)
        with torch.no_grad():
            for runner in runners.values():
                runner(images[:1])  # fails here, not in the verification, when the runtime cannot run the file
    except ExportError:
        raise
    except Exception as e:  # any exporter or runtime failure: say which path failed and offer the other
        fmt.remove(staging)
        reason = (str(e).strip().splitlines() or [""])[0][:300]
        raise ExportError(f"{arch} ({family} family) cannot be exported to {fmt.name}: {type(e).__name__}: "
                          f"{reason}; try {fmt.alternative} instead") from e
    checks = {}
    for how, runner in runners.items():
        checks[how] = verify_export(f"the {fmt.name} export {staging} ({how})", model, runner, images, rtol=rtol,
                                    reference=reference)
        logger.info("%s export, %s: max |logit difference| from eager %.3g <= %.3g (the bound: %s) on %d images",
                    fmt.name, how, checks[how]["max_abs_diff"], checks[how]["bound"], checks[how]["bound_from"],
                    len(images))
    worst = max(checks.values(), key=lambda c: c["max_abs_diff"])
    fmt.move(staging, path)
    logger.info("wrote %s (%s, %s, %d classes, input %s)", path, arch, fmt.name, len(restored.class_names),
                "x".join(map(str, restored.spec.image_size)))
    return {"format": fmt.name, "path": str(path), "arch": arch, "family": family,
            "verified_images": len(images), **worst, **info}


def triton_export(cfg: argparse.Namespace, repository: Path, restored: Restored) -> dict[str, Any]:
    """``--triton``: the verified ONNX export (fp16 with ``--half``) in a Triton model repository,
    ``repository/<name>/`` (``export.triton``); ``<name>``: ``--triton_name``, else the architecture."""
    from export.triton import write_repository
    name = cfg.triton_name or re.sub(r"[^A-Za-z0-9_.-]", "_", restored.spec.arch)
    with temp_dir(repository / name) as scratch:
        summary = export_checkpoint(cfg, FORMATS["onnx"], scratch, restored)
        model_dir = write_repository(summary["path"], repository, name, restored.class_names, cfg.triton_max_batch)
    logger.info("wrote the Triton model repository %s (model %s: config.pbtxt, labels.txt, 1/model.onnx; "
                "max_batch_size %d)", repository, name, cfg.triton_max_batch)
    return {**summary, "format": "Triton (ONNX)", "path": str(model_dir / "1" / "model.onnx"),
            "repository": str(repository), "model_name": name, "config": str(model_dir / "config.pbtxt")}


def quantize_export(cfg: argparse.Namespace, fmt: ExportFormat, fp32_path: Path, restored: Restored) -> dict[str, Any]:
    """Write the int8 version of the verified ``fp32_path`` next to it, calibrated on ``--calib_images``
    training images, and keep it only if it passes the accuracy guard on ``--eval_split``."""
    if fmt.quantize is None or fmt.int8_filename is None:
        raise ExportError(f"--quantize int8 is not available for {fmt.name}; use --onnx or --openvino")
    path = fp32_path.with_name(fmt.int8_filename)
    staging = fmt.unverified(path)
    calibration = sample_images(cfg, restored, "train", cfg.calib_images).numpy()
    metadata = export_metadata(restored.spec)
    try:
        settings = fmt.quantize(fp32_path, staging, calibration, cfg.calib_method, metadata, "train")
        runners = {"fp32": fmt.runners(fp32_path), "int8": fmt.runners(staging)}
    except Exception as e:  # a quantizer or runtime failure: one line naming the path
        fmt.remove(staging)
        reason = (str(e).strip().splitlines() or [""])[0][:300]
        raise ExportError(f"cannot quantize {fp32_path} to int8 ({fmt.name}): {type(e).__name__}: {reason}") from e
    what = f"the int8 {fmt.name} export {staging}"
    spec = restored.spec
    report = compare_accuracy({name: next(iter(r.values())) for name, r in runners.items()},
                              labelled_batches(cfg, restored, cfg.eval_split, cfg.verify_images),
                              thresholds=spec.decision_thresholds if spec.multi_label else None)
    drop = check_accuracy_drop(what, report, cfg.max_accuracy_drop, cfg.eval_split)
    fmt.move(staging, path)
    metric = report_metric(report)
    logger.info("wrote %s (int8, %s calibration on %d training images): %s %.2f%% (fp32 %.2f%%), predictions "
                "agree on %.2f%% of %d %s images", path, cfg.calib_method, len(calibration), METRIC_NAMES[metric],
                report[f"int8_{metric}"], report[f"fp32_{metric}"], report["agreement"], report["images"],
                cfg.eval_split)
    return {"path": str(path), **settings, "eval_split": cfg.eval_split, **report, f"{metric}_drop": drop}
