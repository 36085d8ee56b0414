"""``--predict SOURCE --resume CKPT``: classify an image, a folder (recursive), a txt list of images, or every row
of a Hugging Face dataset (a ``save_to_disk`` or Hub-layout parquet folder; with ``--dataset hf``, also a Hub
name in the datasets cache), each row named by its key ``<split>/<row>`` (``test/000012``) in place of a path.

Each run writes into a folder of its own, ``<run_dir>/predict/<source name>/`` (``<source name>-2``,
``-3``... when that one exists: two runs, at once or one after the other, never mix their files):
``predictions.csv``, the image path, then the class name and probability of each of the ``--topk`` most
likely classes (probabilities under the model's own head: softmax, or sigmoid for ``bce``). With ``-v``
each image is also saved annotated with its predictions under ``images/``; with ``-s`` every prediction
is also written as a line of ``predictions.log``. ``predictions.csv`` is written last; a run that fails
removes its folder. Images that cannot be read are reported, skipped and counted in the summary.

A multi-label model's ``predictions.csv`` is ``path,labels,score_1,...,score_k``: the predicted label set (the
classes whose sigmoid score reaches their decision threshold, the checkpoint's tuned ones or 0.5; names joined
by a space, highest score first, empty when none does), then ``name:score`` of the ``--topk`` highest-scoring
classes whether or not they reach it. ``predictions.json`` holds ``[{"path", "labels": [{"name", "score"}, ...],
"scores": {name: score}}]`` (the set and every class's score); ``-v`` and ``-s`` show the label set and its scores.

Probabilities are those of the logits over the checkpoint's ``--calibrate`` temperature (1 when uncalibrated).
With ``--reject_below P`` (single-label models) ``predictions.csv`` has an ``answer`` column after the path: the
top class, or ``unknown`` when its probability is below P (the top-k columns follow as usual); ``-v`` and ``-s``
show ``unknown`` too, and the summary counts them.

Class names come from ``--class_indices FILE.json`` when given, else from the checkpoint.
"""
from __future__ import annotations

import argparse
import csv
import logging
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any, Sequence

import torch

from dataloader.sources import SourceImages
from engine import amp_dtype, evaluate
from utils.atomic import atomic_write, save_image_atomic, write_json_atomic
from utils.checkpoint import load_checkpoint
from utils.class_indices import read_class_indices
from utils.images import annotate
from utils.metrics import probabilities
from utils.misc import log_to_file, resolve_device
from utils.multilabel import label_sets
from utils.runlock import fresh_dir

from .setup.common import (
    averaged_model,
    build_loader,
    check_reject_below,
    checkpoint_run_dir,
    ensemble_members,
    model_from_checkpoint,
    preprocessor,
    source_dataset,
)

logger = logging.getLogger(__name__)

UNKNOWN = "unknown"  # --reject_below's answer for an image whose top probability is below the threshold


def resolve_class_names(cfg: argparse.Namespace, ckpt: dict[str, Any]) -> list[str] | None:
    """``--class_indices`` names, or None when the checkpoint's (``ckpt``) own names are to be used."""
    if cfg.class_indices:
        return read_class_indices(cfg.class_indices)
    if not ckpt.get("class_names") and not (ckpt.get("model_spec") or {}).get("class_names"):
        raise ValueError(f"{cfg.resume} carries no class names: pass --class_indices FILE.json "
                         f"(a JSON list of names in label order, or {{\"0\": \"name\", ...}})")
    return None


def run(cfg: argparse.Namespace) -> dict[str, Any]:
    """Classify ``--predict`` with ``--resume`` and write the predictions to a new folder
    ``<run_dir>/predict/<source name>[-N]/`` (removed again if the run fails)."""
    run_dir = checkpoint_run_dir(cfg.resume, cfg.output, cfg.arch)
    out_dir = fresh_dir(run_dir / "predict", source_name(cfg.predict))
    try:
        with log_to_file(run_dir / "log.txt"):
            return predict(cfg, out_dir)
    except BaseException:
        shutil.rmtree(out_dir, ignore_errors=True)  # made by this run, written only by it
        raise


def source_name(source: str | Path) -> str:
    """The name of a predict run's folder: the source folder's name, or the image's or list's stem."""
    path = Path(source)
    name = path.resolve().name if path.is_dir() else path.stem
    return name.strip(".") or "predict"


def predict(cfg: argparse.Namespace, out_dir: Path) -> dict[str, Any]:
    """Classify the images of ``cfg.predict`` and write the CSV (and annotations, log) to ``out_dir``."""
    ckpt = load_checkpoint(cfg.resume)  # read once: names, spec and weights all come from it
    names = resolve_class_names(cfg, ckpt)
    device = resolve_device(cfg.device)
    model, spec = model_from_checkpoint(cfg.resume, cfg, fallback_class_names=names or [], ckpt=ckpt)
    model = averaged_model(cfg, model.to(device).eval(), spec, ensemble_members(cfg, spec, device))  # --tta, ensemble
    if names is not None and names != list(spec.class_names):
        if len(names) != spec.num_classes:
            raise ValueError(f"--class_indices {cfg.class_indices} names {len(names)} classes, but {cfg.resume} "
                             f"has {spec.num_classes} outputs")
        logger.info("class names from %s (the checkpoint has %s)", cfg.class_indices, list(spec.class_names)[:10])
        spec = replace(spec, class_names=tuple(names))
    class_names = list(spec.class_names)
    check_reject_below(cfg.reject_below, spec, cfg.resume)
    model = model.to(device).eval()
    dataset = source_dataset(cfg, cfg.predict, "--predict", spec, skip_bad=True)  # skips are counted below
    paths = dataset.paths
    result = evaluate(model, build_loader(cfg, dataset, train=False, device=device),
                      preprocess=preprocessor(spec, device), dtype=amp_dtype(cfg.amp, cfg.amp_dtype, device),
                      progress=not cfg.no_progress, return_outputs=True, desc="predict")
    k = min(cfg.topk, len(class_names))
    rows, chosen, probs = [], [], None
    if result["logits"].numel():  # else every image was unreadable
        probs = probabilities(result["logits"], "bce" if spec.multi_label else spec.head, spec.temperature)
        top_p, top_i = probs.topk(k, dim=1)
        rows = [(index, [(class_names[i], p) for p, i in zip(ps, ix)])
                for index, ps, ix in zip(result["indices"].tolist(), top_p.tolist(), top_i.tolist())]
        if spec.multi_label:
            chosen = predicted_sets(probs, spec.decision_thresholds, class_names)
    predicted = {index for index, _ in rows}
    failures = [(paths[i], dataset.failure(i)) for i in range(len(paths)) if i not in predicted]  # logged by dataset
    if not rows:
        raise ValueError(f"--predict: none of the {len(paths)} images of {cfg.predict} could be read (first: "
                         f"{failures[0][0]}: {failures[0][1]}); nothing was written")

    summary: dict[str, Any] = {"source": str(cfg.predict), "checkpoint": str(cfg.resume), "images": len(paths),
                               "predicted": len(rows), "unreadable": len(failures), "output_dir": str(out_dir)}
    if spec.multi_label:
        summary.update(_write_label_sets(cfg, out_dir, dataset, rows, chosen, probs, class_names, failures))
    else:
        answers = None if cfg.reject_below is None else [answer(top, cfg.reject_below) for _, top in rows]
        shown = answers or [None] * len(rows)
        if answers is not None:
            summary["unknown"] = answers.count(UNKNOWN)
        if cfg.visualize:
            summary["annotated"] = str(save_annotated(dataset, [(index, ([a] if a else []) + [f"{name}: {p:.2%}"
                                                                                             for name, p in top])
                                                                for (index, top), a in zip(rows, shown)],
                                                      out_dir / "images"))
        if cfg.save_log:
            summary["log"] = str(write_log(out_dir / "predictions.log",
                                           [(paths[i], (f"{a}; " if a else "") + describe(top))
                                            for (i, top), a in zip(rows, shown)], failures))
        summary["predictions"] = str(write_csv(out_dir / "predictions.csv", [(paths[i], top) for i, top in rows],
                                               k, answers))  # last: complete
    logger.info("predicted %d of %d images from %s (%d unreadable); wrote %s", len(rows), len(paths), cfg.predict,
                len(failures), summary["predictions"])
    return summary


def _write_label_sets(cfg: argparse.Namespace, out_dir: Path, dataset: SourceImages,
                      rows: Sequence[tuple[int, Sequence[tuple[str, float]]]], chosen: Sequence,
                      probs: torch.Tensor, class_names: Sequence[str],
                      failures: Sequence[tuple[Path, str]]) -> dict[str, str]:
    """A multi-label model's files: annotations (``-v``) and log lines (``-s``) showing each label set,
    predictions.json, then predictions.csv (last: complete); the summary's entries naming them."""
    paths, written = dataset.paths, {}
    if cfg.visualize:
        written["annotated"] = str(save_annotated(dataset, [(index, set_lines(labels)) for (index, _), labels
                                                            in zip(rows, chosen)], out_dir / "images"))
    if cfg.save_log:
        written["log"] = str(write_log(out_dir / "predictions.log", [(paths[index], describe_set(labels))
                                                                     for (index, _), labels in zip(rows, chosen)],
                                       failures))
    written["predictions_json"] = str(write_json(out_dir / "predictions.json", [paths[i] for i, _ in rows], chosen,
                                                 probs, class_names))
    written["predictions"] = str(write_multilabel_csv(out_dir / "predictions.csv", [
        (paths[index], labels, top) for (index, top), labels in zip(rows, chosen)]))
    return written


def answer(top: Sequence[tuple[str, float]], reject_below: float) -> str:
    """``--reject_below``'s answer: the top class's name, or ``unknown`` when its probability is below it."""
    name, p = top[0]
    return name if p >= reject_below else UNKNOWN


def describe(top: Sequence[tuple[str, float]]) -> str:
    return ", ".join(f"{name} {p:.4f}" for name, p in top)


# ------------------------------------------------------------------ multi-label: label sets
def predicted_sets(probs: torch.Tensor, thresholds: Sequence[float],
                   class_names: Sequence[str]) -> list[list[tuple[str, float]]]:
    """Each image's predicted label set, ``(name, score)`` highest score first: the classes whose score
    reaches their decision threshold (utils.multilabel.label_sets)."""
    scores = probs.numpy()
    return [[(class_names[c], float(scores[n, c])) for c in chosen]
            for n, chosen in enumerate(label_sets(scores, thresholds))]


def describe_set(labels: Sequence[tuple[str, float]]) -> str:
    """``labels: 3 7 (3 0.9100, 7 0.6600)``, or ``labels: (none)``: a label set for the log."""
    return f"labels: {' '.join(name for name, _ in labels)} ({describe(labels)})" if labels else "labels: (none)"


def set_lines(labels: Sequence[tuple[str, float]]) -> list[str]:
    """An annotation's lines: the label set, then each label's score."""
    return [f"labels: {' '.join(name for name, _ in labels) or '(none)'}"] + [f"{name}: {p:.2%}" for name, p in labels]


def write_multilabel_csv(path: Path, rows: Sequence[tuple[Path, Sequence[tuple[str, float]],
                                                          Sequence[tuple[str, float]]]]) -> Path:
    """``path,labels,score_1,...,score_k`` per image (``rows``: the image, its label set, its top ``k``): the
    predicted label set (names joined by a space, empty when no class reaches its threshold), then
    ``name:score`` of the ``k`` (``--topk``) highest-scoring classes, whether or not they reach their threshold
    (so the near misses show too)."""
    with atomic_write(path, newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "labels"] + [f"score_{r}" for r in range(1, len(rows[0][2]) + 1)])
        for image, labels, top in rows:
            writer.writerow([str(image), " ".join(name for name, _ in labels)] + [f"{name}:{p:.6f}" for name, p in top])
    return path


def write_json(path: Path, images: Sequence[Path], chosen: Sequence[Sequence[tuple[str, float]]], probs: torch.Tensor,
               class_names: Sequence[str]) -> Path:
    """predictions.json: ``[{"path", "labels": [{"name", "score"}, ...] (the predicted set, highest first),
    "scores": {name: score} (every class)}, ...]``, in the order of predictions.csv."""
    rows = [{"path": str(image), "labels": [{"name": name, "score": round(p, 6)} for name, p in labels],
             "scores": {name: round(float(p), 6) for name, p in zip(class_names, scores)}}
            for image, labels, scores in zip(images, chosen, probs.tolist())]
    write_json_atomic(path, rows, indent=1)
    return path


def write_csv(path: Path, rows: Sequence[tuple[Path, Sequence[tuple[str, float]]]], k: int,
              answers: Sequence[str] | None = None) -> Path:
    """``path,class_1,prob_1,...,class_k,prob_k`` per image; with ``answers`` (``--reject_below``) an ``answer``
    column after the path."""
    extra = ["answer"] if answers is not None else []
    header = ["path"] + extra + [f"{col}_{r}" for r in range(1, k + 1) for col in ("class", "prob")]
    with atomic_write(path, newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        for n, (image, top) in enumerate(rows):
            writer.writerow([str(image)] + ([answers[n]] if answers is not None else [])
                            + [v for name, p in top for v in (name, f"{p:.6f}")])
    return path


def write_log(path: Path, rows: Sequence[tuple[Path, str]], failures: Sequence[tuple[Path, str]]) -> Path:
    """One human-readable line per image (``rows``: the image and its prediction's text), unreadable ones included."""
    with atomic_write(path) as f:
        for image, text in rows:
            f.write(f"{image}\t{text}\n")
        for image, why in failures:
            f.write(f"{image}\tUNREADABLE: {why}\n")
    return path


def save_annotated(dataset: SourceImages, rows: Sequence[tuple[int, Sequence[str]]], folder: Path) -> Path:
    """Each predicted image, as decoded, with its ``lines`` (top classes, or label set) written under it."""
    folder.mkdir(parents=True, exist_ok=True)
    for index, lines in rows:
        save_image_atomic(annotate(dataset.load(index), lines), folder / f"{index:05d}_{dataset.paths[index].stem}.png")
    return folder
