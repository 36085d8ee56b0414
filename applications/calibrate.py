"""``--calibrate --resume CKPT``: temperature scaling (Guo et al., ICML 2017) of a trained single-label model.

Fits one temperature ``T`` on the val split of ``--data`` (the run's own held-out split when it was trained
with ``--val_fraction``) by LBFGS on the NLL of ``softmax(logits / T)``, and writes ``<ckpt>_calibrated.pth``
beside ``CKPT`` (atomically; the original is kept): the same checkpoint with ``T`` in its spec
(``model_spec.temperature``) and what the fit measured (``calibration``). Every mode that reads the new file,
its exports' metadata and the demo divide the logits by ``T``; top-1 never changes, the confidence does.

A mode of its own, as timm's ``avg_checkpoints.py`` or torchmetrics' post-hoc use: it runs on any checkpoint,
also one trained before this existed, without training again. Models with sigmoid outputs (multi-label, or
a ``bce``/``asl`` head) are refused: one softmax temperature does not fit them (their calibration is per
class, and a multi-label model's tuned thresholds would no longer mean what they were tuned for).
"""
from __future__ import annotations

import argparse
import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

from models import extract_state_dict
from models.spec import ModelSpec
from utils.calibration import calibration_report, fit_temperature
from utils.checkpoint import load_checkpoint, save_checkpoint
from utils.metrics import probabilities
from utils.misc import log_to_file

from .setup.common import checkpoint_run_dir, predict_split, restore_for_inference

logger = logging.getLogger(__name__)


def calibrated_path(checkpoint: str | Path) -> Path:
    """Where ``--calibrate`` writes the calibrated copy of ``checkpoint``: ``<stem>_calibrated.pth`` beside it."""
    path = Path(checkpoint)
    return path.with_name(f"{path.stem}_calibrated.pth")


def run(cfg: argparse.Namespace) -> dict[str, Any]:
    with log_to_file(checkpoint_run_dir(cfg.resume, cfg.output, cfg.arch) / "log.txt"):
        return calibrate(cfg)


def calibrate(cfg: argparse.Namespace) -> dict[str, Any]:
    """Fit ``--resume``'s temperature on the val split and write the calibrated checkpoint; the summary."""
    restored = restore_for_inference(cfg)
    spec = restored.spec
    if spec.sigmoid:
        raise ValueError(f"--calibrate: {cfg.resume} has per-class sigmoid outputs "
                         f"({'multi-label' if spec.multi_label else f'head {spec.head}'}); --calibrate fits one "
                         f"softmax temperature, for single-label softmax models only")
    dataset, result = predict_split(cfg, restored, "val", progress=not cfg.no_progress)
    logits, labels = result["logits"], result["targets"]
    if not len(labels):
        raise ValueError(f"--calibrate: the val split of {cfg.data} has no readable images to fit a temperature on")
    temperature = fit_temperature(logits, labels)
    before = calibration_report(probabilities(logits, spec.head), labels)
    after = calibration_report(probabilities(logits, spec.head, temperature), labels)
    fit = {"temperature": temperature, "split": dataset.split, "count": len(labels), "data": str(cfg.data),
           "previous_temperature": spec.temperature,
           **{f"{key}_{when}": report[key] for when, report in (("before", before), ("after", after))
              for key in ("ece", "nll", "brier")}}
    out = calibrated_path(cfg.resume)
    save_checkpoint(calibrated_checkpoint(load_checkpoint(cfg.resume), replace(spec, temperature=temperature), fit),
                    out)
    logger.info("temperature %.4f fitted on the %s split (%d images): ECE %.4f -> %.4f, NLL %.4f -> %.4f; wrote %s",
                temperature, dataset.split, len(labels), fit["ece_before"], fit["ece_after"], fit["nll_before"],
                fit["nll_after"], out)
    return {**fit, "checkpoint": str(out)}


def calibrated_checkpoint(ckpt: dict[str, Any], spec: ModelSpec, fit: dict[str, Any]) -> dict[str, Any]:
    """``ckpt`` with the calibrated ``spec`` (and its class names) and the ``fit``'s numbers; a bare state dict
    becomes a checkpoint holding it, so that the spec travels with it."""
    base = dict(ckpt) if "model" in ckpt else {"model": extract_state_dict(ckpt)}
    return {**base, "model_spec": spec.to_dict(), "class_names": list(spec.class_names), "arch": spec.arch,
            "calibration": fit}
