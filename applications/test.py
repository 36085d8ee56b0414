"""``--evaluation``: evaluate a checkpoint on a split and report.

Writes ``<run_dir>/eval_<split>/metrics.json`` (top-1, top-5, per-class precision/recall/F1, the
confusion matrix), ``confusion_matrix.png`` and, with ``--out``, each image's prediction.
"""
from __future__ import annotations

import argparse
import json
import logging
import pickle
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.nn as nn
import yaml

from utils.metrics import classification_report
from utils.misc import log_to_file, resolve_device
from utils.plots import plot_confusion_matrix

from .common import (amp_dtype, build_dataset, build_loader, data_class_names, model_from_checkpoint,
                     preprocessor)
from .train import evaluate

logger = logging.getLogger(__name__)


def evaluate_and_report(model: nn.Module, loader: torch.utils.data.DataLoader, dataset: Any,
                        class_names: Sequence[str], *, preprocess: Callable, dtype: torch.dtype | None,
                        out_dir: Path, checkpoint: str | Path | None = None, predictions_file: str | None = None,
                        progress: bool = False) -> dict[str, Any]:
    """Evaluate, then write metrics.json and confusion_matrix.png to ``out_dir``; returns the metrics."""
    result = evaluate(model, loader, preprocess=preprocess, dtype=dtype, progress=progress, return_outputs=True,
                      desc=f"eval {dataset.split}")
    labels, probs = result["targets"].numpy(), result["logits"].softmax(dim=1)
    preds = probs.argmax(dim=1).numpy()
    report = classification_report(labels, preds, class_names)
    metrics = {"split": dataset.split, "data": str(dataset.root), "checkpoint": str(checkpoint) if checkpoint else None,
               "count": result["count"], "top1": result["top1"], "top5": result["top5"], **report}
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    plot_confusion_matrix(report["confusion_matrix"], class_names, out_dir / "confusion_matrix.png",
                          title=f"{dataset.split}: top-1 {result['top1']:.2f}%")
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
        path.write_text(json.dumps(rows, indent=1))
    elif path.suffix in (".yaml", ".yml"):
        path.write_text(yaml.safe_dump(rows, sort_keys=False))
    elif path.suffix == ".pkl":
        with open(path, "wb") as f:
            pickle.dump(rows, f)
    else:
        raise ValueError(f"--out must end in .json, .yaml or .pkl, got {str(path)!r}")


def checkpoint_run_dir(path: str | Path) -> Path:
    """The run directory a checkpoint belongs to (``<run>/checkpoints/x.pth`` -> ``<run>``)."""
    path = Path(path).resolve()
    return path.parent.parent if path.parent.name == "checkpoints" else path.parent


def run(cfg: argparse.Namespace) -> dict[str, Any]:
    """Evaluate ``--resume`` on ``--eval_split`` of ``--data``."""
    run_dir = checkpoint_run_dir(cfg.resume)
    with log_to_file(run_dir / "log.txt"):
        return _evaluate_checkpoint(cfg, run_dir)


def _evaluate_checkpoint(cfg: argparse.Namespace, run_dir: Path) -> dict[str, Any]:
    device = resolve_device(cfg.device)
    model, model_cfg, class_names = model_from_checkpoint(cfg.resume, cfg, fallback_class_names=data_class_names(cfg))
    data_classes = data_class_names(cfg)
    if data_classes != class_names:
        raise ValueError(f"{cfg.data} has classes {data_classes[:10]} but {cfg.resume} was trained on "
                         f"{class_names[:10]}; evaluate on data with the model's classes")
    model.to(device)
    eval_cfg = argparse.Namespace(**{**vars(cfg), **model_cfg})
    dataset = build_dataset(eval_cfg, cfg.eval_split, class_names, train=False, fallback=True)
    loader = build_loader(eval_cfg, dataset, train=False, device=device)
    metrics = evaluate_and_report(model, loader, dataset, class_names, preprocess=preprocessor(model_cfg, device),
                                  dtype=amp_dtype(cfg.amp, cfg.amp_dtype, device),
                                  out_dir=run_dir / f"eval_{dataset.split}", checkpoint=cfg.resume,
                                  predictions_file=cfg.out, progress=not cfg.no_progress)
    logger.info("%s on %s split (%d images): top-1 %.2f  top-5 %.2f  macro F1 %.4f; report in %s",
                cfg.resume, dataset.split, metrics["count"], metrics["top1"], metrics["top5"],
                metrics["macro"]["f1"], run_dir / f"eval_{dataset.split}")
    return {"top1": metrics["top1"], "top5": metrics["top5"], "split": dataset.split,
            "report_dir": str(run_dir / f"eval_{dataset.split}")}
