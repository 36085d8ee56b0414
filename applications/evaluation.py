"""``--evaluation``: evaluate a checkpoint on a split and report.

Writes ``<run_dir>/eval_<split>/metrics.json`` (top-1, top-5, per-class precision/recall/F1, the
confusion matrix; in ``eval_<split>_tta_<mode>`` / ``eval_<split>_ensemble<N>`` with ``--tta`` / several
``--resume`` checkpoints, beside the plain report), ``confusion_matrix.png`` and, with ``--out``, each image's
prediction. A multi-label checkpoint is scored at the decision thresholds its spec carries
(``--tune_thresholds``'s, else 0.5): mAP, CP/CR/CF1, OP/OR/OF1, per_class.md, per_class.png and
worst_per_class.png (engine/report.py). A single-label softmax checkpoint is scored at its ``--calibrate``
temperature, and its report adds ECE, NLL, Brier, reliability.png and risk_coverage.png; with ``--reject_below P``
the coverage and the accuracy on the images whose top probability reaches P (the rest answered ``unknown``).

``--knn K`` also scores a k-nearest-neighbour classifier on the embeddings (the classifier head's input,
``engine.features``): the train split's embeddings are the memory bank, the K most cosine-similar vote
(``--knn_vote``: DINO's weighted vote, or majority). Its top-1 is logged beside the linear head's on the same
images (the plain checkpoint, without TTA or ensemble) and written to ``<report_dir>/knn.json``.
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn as nn
from torch.utils.data import DataLoader

from engine import amp_dtype, evaluate, evaluate_and_report
from engine.features import KNN_TEMPERATURE, knn_predict
from models.spec import ModelSpec
from utils.atomic import write_json_atomic
from utils.distributed import DistInfo, cleanup, init_distributed
from utils.misc import main_process_log

from .setup.common import (
    Restored,
    averaged_model,
    build_dataset,
    build_loader,
    check_reject_below,
    checkpoint_run_dir,
    embed_split,
    ensemble_members,
    input_geometry,
    preprocessor,
    restore_for_inference,
    size_text,
)

logger = logging.getLogger(__name__)


def run(cfg: argparse.Namespace) -> dict[str, Any]:
    """Evaluate ``--resume`` on ``--eval_split`` of ``--data``.

    Under ``torchrun`` each process evaluates its disjoint shard and the results are gathered, as in
    training's evaluation, so the report equals a single process's; rank 0 alone logs and writes it.
    """
    info = init_distributed(cfg.device)
    run_dir = checkpoint_run_dir(cfg.resume, cfg.output, cfg.arch)
    try:
        with main_process_log(info.is_main, run_dir / "log.txt"):
            return _evaluate_checkpoint(cfg, run_dir, info)
    finally:
        cleanup()


def _evaluate_checkpoint(cfg: argparse.Namespace, run_dir: Path, info: DistInfo) -> dict[str, Any]:
    restored = restore_for_inference(cfg, info.device)
    spec = restored.spec
    check_reject_below(cfg.reject_below, spec, cfg.resume)
    check_knn(cfg, spec, info)
    dataset = build_dataset(cfg, cfg.eval_split, restored.class_names, train=False, fallback=True, spec=spec)
    loader = build_loader(cfg, dataset, train=False, device=restored.device, dist_info=info)
    members = ensemble_members(cfg, spec, restored.device)
    # a TTA or ensemble report beside the plain one, not over it
    suffix = ((f"_tta_{'_'.join(cfg.tta)}" if cfg.tta else "") + (f"_ensemble{1 + len(members)}" if members else "")
              + ("_test_size" if cfg.use_test_size else ""))
    report_dir = run_dir / f"eval_{dataset.split}{suffix}"
    model = averaged_model(cfg, restored.model, spec, members)
    metrics = evaluate_and_report(model, loader, dataset, restored.class_names,
                                  preprocess=preprocessor(spec, restored.device),
                                  dtype=amp_dtype(cfg.amp, cfg.amp_dtype, restored.device),
                                  out_dir=report_dir, checkpoint=cfg.resume,
                                  predictions_file=cfg.out, progress=not cfg.no_progress and info.is_main,
                                  head=spec.head, write=info.is_main, multi_label=spec.multi_label,
                                  thresholds=spec.decision_thresholds if spec.multi_label else None,
                                  temperature=spec.temperature, reject_below=cfg.reject_below,
                                  input_geometry=input_geometry(spec, cfg.use_test_size))
    summary = {"top1": metrics["top1"], "top5": metrics["top5"], "split": dataset.split, "report_dir": str(report_dir),
               "image_size": list(spec.image_size)}
    size = f"at {size_text(spec.image_size)}{' (--use_test_size)' if cfg.use_test_size else ''}"
    if model is not restored.model:  # --tta or an ensemble: each checkpoint's plain numbers beside the average's
        summary["plain"] = plain_numbers(cfg, [restored.model, *(m for m, _ in members)], loader, spec, restored.device,
                                         metrics["map"] if spec.multi_label else metrics["top1"])
    if spec.multi_label:
        tuned = "tuned" if spec.thresholds else "default 0.5"
        logger.info("%s on %s split (%d images) %s: mAP %s  OF1 %.2f  CF1 %.2f  p@1 %.2f at its %s thresholds; "
                    "report in %s", cfg.resume, dataset.split, metrics["count"], size,
                    "n/a" if metrics["map"] is None else f"{metrics['map']:.2f}", metrics["OF1"], metrics["CF1"],
                    metrics["top1"], tuned, report_dir)
        return {**summary, "map": metrics["map"], "of1": metrics["OF1"], "cf1": metrics["CF1"]}
    logger.info("%s on %s split (%d images) %s: top-1 %.2f  top-5 %.2f  macro F1 %.4f; report in %s",
                cfg.resume, dataset.split, metrics["count"], size, metrics["top1"], metrics["top5"],
                metrics["macro"]["f1"], report_dir)
    if "calibration" in metrics:
        summary.update({key: metrics["calibration"][key] for key in ("ece", "nll", "brier", "temperature")})
    if "selective" in metrics:
        summary.update({f"selective_{key}": metrics["selective"][key] for key in ("coverage", "accuracy")})
    if cfg.knn:
        summary["knn"] = knn_evaluation(cfg, restored, dataset.split, report_dir)
    return summary


def check_knn(cfg: argparse.Namespace, spec: ModelSpec, info: DistInfo) -> None:
    """``--knn``: a single-label model, one process (refused before anything is evaluated)."""
    if not cfg.knn:
        return
    if spec.multi_label:
        raise ValueError(f"--knn: {cfg.resume} is a multi-label model; the k-NN vote picks one class per image "
                         f"(single-label models only): drop --knn")
    if info.world_size > 1:
        raise ValueError("--knn computes the embeddings in one process: run --evaluation --knn without torchrun")


def knn_evaluation(cfg: argparse.Namespace, restored: Restored, split: str, report_dir: Path) -> dict[str, Any]:
    """``--knn K``: top-1 of the k-NN classifier on ``split``'s embeddings against the train split's, beside the
    plain linear head's top-1 on the same images; written to ``report_dir/knn.json``. ``split`` is never train
    (``config.modes.evaluation`` refuses ``--knn`` with ``--eval_split train`` before anything runs)."""
    progress = not cfg.no_progress
    _, bank = embed_split(cfg, restored, "train", progress=progress)
    _, queries = embed_split(cfg, restored, split, progress=progress)
    predicted = knn_predict(bank["features"], bank["targets"], queries["features"], cfg.knn,
                            len(restored.class_names), vote=cfg.knn_vote)
    hits = (predicted == queries["targets"]).double()
    weighted = cfg.knn_vote == "weighted"
    result = {"k": cfg.knn, "vote": cfg.knn_vote, "temperature": KNN_TEMPERATURE if weighted else None,
              "metric": "cosine", "bank": "train", "bank_images": len(bank["features"]), "split": split,
              "images": len(hits), "top1": 100.0 * float(hits.mean()), "linear_top1": queries["top1"]}
    write_json_atomic(report_dir / "knn.json", result)
    logger.info("k-NN top-1 %.2f (k=%d, %s vote, cosine similarity to the train split's %d embeddings); the linear "
                "head's top-1 %.2f on the same %d %s images", result["top1"], cfg.knn, cfg.knn_vote,
                result["bank_images"], result["linear_top1"], result["images"], split)
    return result


def plain_numbers(cfg: argparse.Namespace, models: Sequence[nn.Module], loader: DataLoader, spec: ModelSpec,
                  device: torch.device, averaged: float | None) -> list[dict[str, Any]]:
    """Each checkpoint of ``--resume`` alone, without TTA, on the same images: its headline metric (top-1,
    or mAP for a multi-label model), logged beside the ``averaged`` one (TTA and/or the ensemble)."""
    key, name = ("map", "mAP") if spec.multi_label else ("top1", "top-1")
    rows = []
    for path, model in zip([cfg.resume, *(cfg.ensemble or [])], models):
        result = evaluate(model, loader, preprocess=preprocessor(spec, device), multi_label=spec.multi_label,
                          dtype=amp_dtype(cfg.amp, cfg.amp_dtype, device),
                          thresholds=spec.decision_thresholds if spec.multi_label else 0.5)
        rows.append({"checkpoint": str(path), key: result[key]})
        logger.info("plain %s %.2f: %s alone, without TTA", name, result[key], path)
    how = " + ".join(([f"--tta {' '.join(cfg.tta)}"] if cfg.tta else []) +
                     ([f"ensemble of {len(models)}"] if len(models) > 1 else []))
    logger.info("%s %s: %s (plain: %s)", name, how, "n/a" if averaged is None else f"{averaged:.2f}",
                ", ".join(f"{row[key]:.2f}" for row in rows))
    return rows
