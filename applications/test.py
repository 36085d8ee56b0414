"""``--evaluation``: evaluate a checkpoint on a split and report.

Writes ``<run_dir>/eval_<split>/metrics.json`` (top-1, top-5, per-class precision/recall/F1, the
confusion matrix), ``confusion_matrix.png`` and, with ``--out``, each image's prediction.
"""
from __future__ import annotations

import argparse
import logging
import pickle
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.nn as nn
import yaml

from utils.atomic import write_bytes_atomic, write_json_atomic, write_text_atomic
from utils.metrics import classification_report, probabilities
from utils.distributed import DistInfo, cleanup, init_distributed
from utils.misc import main_process_log
from utils.plots import most_confident_errors, plot_confusion_matrix, save_error_grid

from .common import (amp_dtype, build_dataset, build_loader, checkpoint_run_dir, preprocessor,
                     restore_for_inference)
from .train import evaluate

logger = logging.getLogger(__name__)


def evaluate_and_report(model: nn.Module, loader: torch.utils.data.DataLoader, dataset: Any,
                        class_names: Sequence[str], *, preprocess: Callable, dtype: torch.dtype | None,
                        out_dir: Path, checkpoint: str | Path | None = None, predictions_file: str | None = None,
                        progress: bool = False, head: str = "softmax", write: bool = True) -> dict[str, Any]:
    """Evaluate, then write metrics.json and confusion_matrix.png to ``out_dir``; returns the metrics."""
    result = evaluate(model, loader, preprocess=preprocess, dtype=dtype, progress=progress, return_outputs=True,
                      desc=f"eval {dataset.split}")
    labels, probs = result["targets"].numpy(), probabilities(result["logits"], head)
    preds = probs.argmax(dim=1).numpy()
    report = classification_report(labels, preds, class_names)
    metrics = {"split": dataset.split, "data": str(dataset.root), "checkpoint": str(checkpoint) if checkpoint else None,
               "count": result["count"], "top1": result["top1"], "top5": result["top5"], **report}
    if not write:  # another rank of a distributed run writes the files
        return metrics
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out_dir / "metrics.json", metrics)
    plot_confusion_matrix(report["confusion_matrix"], class_names, out_dir / "confusion_matrix.png",
                          title=f"{dataset.split}: top-1 {result['top1']:.2f}%")
    confidence = probs.max(dim=1).values.numpy()
    worst = most_confident_errors(labels, preds, confidence, n=16)
    if len(worst):
        indices = result["indices"].tolist()
        save_error_grid([dataset.load(indices[k]) for k in worst], [class_names[labels[k]] for k in worst],
                        [class_names[preds[k]] for k in worst], [float(confidence[k]) for k in worst],
                        out_dir / "errors.png")
    if predictions_file:
        rows = [{"path": dataset.samples[i][0], "label": int(labels[k]), "label_name": class_names[labels[k]],
                 "prediction": int(preds[k]), "prediction_name": class_names[preds[k]],
                 "scores": [round(float(p), 6) for p in probs[k]]}
                for k, i in enumerate(result["indices"].tolist())]
        write_predictions(rows, predictions_file)
        logger.info("wrote %d predictions to %s", len(rows), predictions_file)
    return metrics


def write_predictions(rows: list[dict[str, Any]], path: str | Path) -> None:
    """Per-image predictions as JSON, YAML or pickle, by the file's suffix."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".json":
        write_json_atomic(path, rows, indent=1)
    elif path.suffix in (".yaml", ".yml"):
        write_text_atomic(path, yaml.safe_dump(rows, sort_keys=False))
    elif path.suffix == ".pkl":
        write_bytes_atomic(path, pickle.dumps(rows))
    else:
        raise ValueError(f"--out must end in .json, .yaml or .pkl, got {str(path)!r}")


def run(cfg: argparse.Namespace) -> dict[str, Any]:
    """Evaluate ``--resume`` on ``--eval_split`` of ``--data``.

    Under ``torchrun`` each process evaluates its disjoint shard and the results are gathered, as in
    training's evaluation, so the report equals a single process's; rank 0 alone logs and writes it.
    """
    info = init_distributed(cfg.device)
    run_dir = checkpoint_run_dir(cfg.resume)
    try:
        with main_process_log(info.is_main, run_dir / "log.txt"):
            return _evaluate_checkpoint(cfg, run_dir, info)
    finally:
        cleanup()


def _evaluate_checkpoint(cfg: argparse.Namespace, run_dir: Path, info: DistInfo) -> dict[str, Any]:
    restored = restore_for_inference(cfg, info.device)
    dataset = build_dataset(restored.cfg, cfg.eval_split, restored.class_names, train=False, fallback=True)
    loader = build_loader(restored.cfg, dataset, train=False, device=restored.device, dist_info=info)
    metrics = evaluate_and_report(restored.model, loader, dataset, restored.class_names,
                                  preprocess=preprocessor(restored.model_cfg, restored.device),
                                  dtype=amp_dtype(cfg.amp, cfg.amp_dtype, restored.device),
                                  out_dir=run_dir / f"eval_{dataset.split}", checkpoint=cfg.resume,
                                  predictions_file=cfg.out, progress=not cfg.no_progress and info.is_main,
                                  head=restored.model_cfg.get("criterion") or "softmax", write=info.is_main)
    logger.info("%s on %s split (%d images): top-1 %.2f  top-5 %.2f  macro F1 %.4f; report in %s",
                cfg.resume, dataset.split, metrics["count"], metrics["top1"], metrics["top5"],
                metrics["macro"]["f1"], run_dir / f"eval_{dataset.split}")
    return {"top1": metrics["top1"], "top5": metrics["top5"], "split": dataset.split,
            "report_dir": str(run_dir / f"eval_{dataset.split}")}
