"""The evaluation report: metrics.json, the confusion matrix, the most confident errors and, when asked,
every image's prediction, for a model evaluated on one split (``--evaluation`` and the end of training)."""
from __future__ import annotations

import logging
import pickle
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn as nn
import yaml

from utils.atomic import write_bytes_atomic, write_json_atomic, write_text_atomic
from utils.metrics import classification_report, probabilities
from utils.multilabel import multilabel_report
from utils.plots import most_confident_errors, plot_confusion_matrix, save_error_grid

from .loops import evaluate

logger = logging.getLogger(__name__)


def evaluate_and_report(model: nn.Module, loader: torch.utils.data.DataLoader, dataset: Any,
                        class_names: Sequence[str], *, preprocess: Callable, dtype: torch.dtype | None,
                        out_dir: Path, checkpoint: str | Path | None = None, predictions_file: str | None = None,
                        progress: bool = False, head: str = "softmax", write: bool = True,
                        multi_label: bool = False, thresholds: Sequence[float] | None = None) -> dict[str, Any]:
    """Evaluate, then write metrics.json and confusion_matrix.png to ``out_dir``; returns the metrics. A
    ``multi_label`` model is scored at its decision ``thresholds`` (0.5 each when None)."""
    result = evaluate(model, loader, preprocess=preprocess, dtype=dtype, progress=progress, return_outputs=True,
                      desc=f"eval {dataset.split}")
    if multi_label:
        return _multilabel_report(result, dataset, class_names, out_dir=out_dir, checkpoint=checkpoint, write=write,
                                  thresholds=0.5 if thresholds is None else list(thresholds))
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


def _multilabel_report(result: dict[str, Any], dataset: Any, class_names: Sequence[str], *, out_dir: Path,
                       checkpoint: str | Path | None, write: bool,
                       thresholds: Sequence[float] | float) -> dict[str, Any]:
    """metrics.json of a multi-label model: mAP, p@1, the per-class and overall precision/recall/F1 at
    ``thresholds`` and the per-class table (docs/multilabel.md)."""
    scores, truth = probabilities(result["logits"], "bce").numpy(), result["targets"].numpy() > 0.5
    report = multilabel_report(scores, truth, thresholds if isinstance(thresholds, float) else np.asarray(thresholds),
                               class_names)
    metrics = {"split": dataset.split, "data": str(dataset.root), "checkpoint": str(checkpoint) if checkpoint else None,
               "count": result["count"], "top1": result["top1"], "top5": result["top5"], **report}
    if write:
        out_dir.mkdir(parents=True, exist_ok=True)
        write_json_atomic(out_dir / "metrics.json", metrics)
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
