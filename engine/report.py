"""The evaluation report: metrics.json, the confusion matrix, the most confident errors and, when asked,
every image's prediction, for a model evaluated on one split (``--evaluation`` and the end of training); for a
multi-label model the per-class table and pictures in place of the confusion matrix and errors.

A single-label softmax model's report also says how far its confidence can be trusted (utils/calibration.py):
ECE (15 bins), NLL and Brier score of its probabilities (at its ``--calibrate`` temperature) in metrics.json's
``calibration``, reliability.png, and risk_coverage.png (the error rate when the least confident images are
answered ``unknown``); with ``--reject_below P`` the coverage and the accuracy on the accepted images
(``selective``)."""
from __future__ import annotations

import logging
import pickle
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
import torch.nn as nn
import yaml

from models.spec import SIGMOID_HEADS
from utils.atomic import write_bytes_atomic, write_json_atomic, write_text_atomic
from utils.calibration import calibration_report, risk_coverage, selective_accuracy
from utils.metrics import classification_report, probabilities
from utils.multilabel import label_sets, multilabel_report
from utils.plots import (
    most_confident_errors,
    plot_confusion_matrix,
    plot_per_class,
    plot_reliability,
    plot_risk_coverage,
    save_error_grid,
    save_image_table,
    worst_scored,
)

from .loops import evaluate

logger = logging.getLogger(__name__)


def evaluate_and_report(model: nn.Module, loader: torch.utils.data.DataLoader, dataset: Any,
                        class_names: Sequence[str], *, preprocess: Callable, dtype: torch.dtype | None,
                        out_dir: Path, checkpoint: str | Path | None = None, predictions_file: str | None = None,
                        progress: bool = False, head: str = "softmax", write: bool = True,
                        multi_label: bool = False, thresholds: Sequence[float] | None = None,
                        temperature: float = 1.0, reject_below: float | None = None,
                        input_geometry: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Evaluate, then write metrics.json and confusion_matrix.png to ``out_dir``; returns the metrics. A
    ``multi_label`` model is scored at its decision ``thresholds`` (0.5 each when None) and gets per_class.md,
    per_class.png and worst_per_class.png in place of the confusion matrix and errors.png. A single-label one's
    probabilities are those of its logits over ``temperature``; a softmax one's report has its calibration, and
    with ``reject_below`` its coverage and accuracy when less confident images are answered ``unknown``.
    ``input_geometry`` (the evaluation's input size, resize and crop) is recorded as the metrics' ``input``."""
    result = evaluate(model, loader, preprocess=preprocess, dtype=dtype, progress=progress, return_outputs=True,
                      desc=f"eval {dataset.split}")
    if multi_label:
        return _multilabel_report(result, dataset, class_names, out_dir=out_dir, checkpoint=checkpoint, write=write,
                                  thresholds=0.5 if thresholds is None else list(thresholds),
                                  predictions_file=predictions_file, input_geometry=input_geometry)
    labels, probs = result["targets"].numpy(), probabilities(result["logits"], head, temperature)
    preds = probs.argmax(dim=1).numpy()
    report = classification_report(labels, preds, class_names)
    metrics = {"split": dataset.split, "data": str(dataset.root), "checkpoint": str(checkpoint) if checkpoint else None,
               "count": result["count"], "top1": result["top1"], "top5": result["top5"], **report}
    if len(labels):  # a sigmoid head's scores are no softmax distribution: its report has no calibration
        metrics.update(trust_metrics(probs, result["targets"], temperature, reject_below,
                                     calibration=head not in SIGMOID_HEADS))
    if input_geometry:
        metrics["input"] = dict(input_geometry)
    if not write:  # another rank of a distributed run writes the files
        return metrics
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out_dir / "metrics.json", metrics)
    if "calibration" in metrics:
        plot_trust(metrics, probs, result["targets"], out_dir, title=f"{dataset.split}")
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


def trust_metrics(probs: torch.Tensor, labels: torch.Tensor, temperature: float,
                  reject_below: float | None, calibration: bool = True) -> dict[str, Any]:
    """metrics.json's ``calibration`` (with ``calibration``, for softmax ``probs``: ECE, NLL, Brier, the reliability
    bins and the ``temperature`` applied) and, with ``reject_below``, ``selective`` (coverage and accuracy on the
    images whose top probability reaches it, as --predict and the demo answer them)."""
    out: dict[str, Any] = {}
    if calibration:
        out["calibration"] = {**calibration_report(probs, labels), "temperature": temperature}
        logger.info("calibration (temperature %.4g): ECE %.4f  NLL %.4f  Brier %.4f", temperature,
                    out["calibration"]["ece"], out["calibration"]["nll"], out["calibration"]["brier"])
    if reject_below is not None:
        confidence, predicted = probs.max(dim=1)
        out["selective"] = selective_accuracy(confidence.numpy(), (predicted == labels).numpy(), reject_below)
        accuracy = out["selective"]["accuracy"]
        logger.info("--reject_below %g: %d of %d images answered (coverage %.2f%%), accuracy on them %s",
                    reject_below, out["selective"]["accepted"], out["selective"]["count"],
                    out["selective"]["coverage"], "n/a" if accuracy is None else f"{accuracy:.2f}%")
    return out


def plot_trust(metrics: dict[str, Any], probs: torch.Tensor, labels: torch.Tensor, out_dir: Path, title: str) -> None:
    """reliability.png and risk_coverage.png (the ``--reject_below`` point marked) of a softmax report."""
    calibration = metrics["calibration"]
    plot_reliability(calibration["reliability"], out_dir / "reliability.png",
                     title=f"{title}: ECE {calibration['ece']:.4f}, NLL {calibration['nll']:.4f} "
                           f"(T {calibration['temperature']:.3g})")
    confidence, predicted = probs.max(dim=1)
    coverage, risk, _ = risk_coverage(confidence.numpy(), (predicted == labels).numpy())
    selective = metrics.get("selective")
    point = None
    if selective and selective["accuracy"] is not None:
        point = (selective["coverage"] / 100, 1 - selective["accuracy"] / 100)
    plot_risk_coverage(coverage, risk, out_dir / "risk_coverage.png", point=point,
                       title=f"{title}: risk when the least confident are answered unknown")


def _multilabel_report(result: dict[str, Any], dataset: Any, class_names: Sequence[str], *, out_dir: Path,
                       checkpoint: str | Path | None, write: bool, thresholds: Sequence[float] | float,
                       predictions_file: str | None = None,
                       input_geometry: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A multi-label model's report: metrics.json (mAP, p@1, CP/CR/CF1, OP/OR/OF1 at ``thresholds``, the
    per-class table), per_class.md and per_class.png (AP and F1 per class), worst_per_class.png and, with
    ``predictions_file``, each image's label set and predicted set."""
    scores, truth = probabilities(result["logits"], "bce").numpy(), result["targets"].numpy() > 0.5
    report = multilabel_report(scores, truth, thresholds, class_names)
    metrics = {"split": dataset.split, "data": str(dataset.root), "checkpoint": str(checkpoint) if checkpoint else None,
               "count": result["count"], "map": report["map"], "top1": result["top1"], "top5": result["top5"],
               **{key: report[key] for key in ("CP", "CR", "CF1", "OP", "OR", "OF1", "thresholds", "per_class")},
               **({"input": dict(input_geometry)} if input_geometry else {})}
    if not write:  # another rank of a distributed run writes the files
        return metrics
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out_dir / "metrics.json", metrics)
    write_text_atomic(out_dir / "per_class.md", per_class_table(metrics))
    rows = metrics["per_class"].values()
    plot_per_class(class_names, [row["ap"] for row in rows], [row["f1"] for row in rows], out_dir / "per_class.png",
                   title=f"{dataset.split}: mAP {_number(metrics['map'])}, OF1 {metrics['OF1']:.2f}, "
                         f"CF1 {metrics['CF1']:.2f}")
    thr = np.asarray(metrics["thresholds"])
    predicted = label_sets(scores, thr)
    indices = result["indices"].tolist()
    save_worst_per_class(scores, truth, thr, predicted, [row["ap"] for row in rows], class_names,
                         lambda k: dataset.load(indices[k]), out_dir / "worst_per_class.png")
    if predictions_file:
        predictions = [{"path": dataset.samples[i][0], "labels": [class_names[c] for c in np.flatnonzero(truth[k])],
                        "predicted": [class_names[c] for c in predicted[k]],
                        "scores": {name: round(float(p), 6) for name, p in zip(class_names, scores[k])}}
                       for k, i in enumerate(indices)]
        write_predictions(predictions, predictions_file)
        logger.info("wrote %d predictions to %s", len(predictions), predictions_file)
    return metrics


def _number(value: float | None) -> str:
    """A percentage with two decimals, ``n/a`` when undefined (mAP or AP without positives)."""
    return "n/a" if value is None else f"{value:.2f}"


def per_class_table(metrics: dict[str, Any]) -> str:
    """A multi-label report's metrics as markdown: the overall numbers, then support, AP, precision, recall,
    F1 and decision threshold of each class (percent)."""
    lines = [f"# {metrics['split']} split: {metrics['count']} images, {metrics['checkpoint'] or 'the model'}", "",
             f"mAP {_number(metrics['map'])} | p@1 {metrics['top1']:.2f} | "
             + " | ".join(f"{key} {metrics[key]:.2f}" for key in ("CP", "CR", "CF1", "OP", "OR", "OF1")), "",
             "| class | support | AP | precision | recall | F1 | threshold |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for (name, row), threshold in zip(metrics["per_class"].items(), metrics["thresholds"]):
        lines.append(f"| {name} | {row['support']} | {_number(row['ap'])} | {row['precision']:.2f} | "
                     f"{row['recall']:.2f} | {row['f1']:.2f} | {threshold:.4f} |")
    return "\n".join(lines) + "\n"


WORST_CLASSES = 20  # worst_per_class.png shows at most this many classes (the lowest AP ones)


def save_worst_per_class(scores: np.ndarray, truth: np.ndarray, thresholds: np.ndarray, predicted: list[list[int]],
                         ap: Sequence[float | None], class_names: Sequence[str], load: Callable[[int], Any],
                         path: Path, n: int = 2) -> Path:
    """worst_per_class.png: a row per class (the ``WORST_CLASSES`` of lowest AP when there are more), its
    ``n`` positives of lowest score and ``n`` negatives of highest score, each captioned with the score, the
    true and the predicted label set; red where the class is decided wrongly at its threshold."""
    classes = range(len(class_names))
    if len(class_names) > WORST_CLASSES:
        classes = sorted(sorted(classes, key=lambda c: np.inf if ap[c] is None else ap[c])[:WORST_CLASSES])
    worst = worst_scored(scores, truth, n)
    images: dict[int, Any] = {}  # a sample shown for several classes is read once

    def names(indices) -> str:
        return " ".join(class_names[c] for c in indices) or "-"

    def cell(c: int, k: int) -> tuple:
        positive, score = bool(truth[k, c]), float(scores[k, c])
        caption = (f"{class_names[c]}: {'pos' if positive else 'neg'} {score:.2f}\n"
                   f"true: {names(np.flatnonzero(truth[k]))}\npred: {names(predicted[k])}")
        if k not in images:
            images[k] = load(k)
        return images[k], caption, positive != (score >= thresholds[c])

    rows = [[cell(c, k) for k in worst[c][0] + worst[c][1]] for c in classes]
    return save_image_table(rows, path, title=f"most wrongly scored per class: {n} lowest-scored positives, "
                                              f"{n} highest-scored negatives")


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
