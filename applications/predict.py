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

from dataloader.sources import SourceImages
from engine import amp_dtype, evaluate
from utils.atomic import atomic_write, save_image_atomic
from utils.checkpoint import load_checkpoint
from utils.class_indices import read_class_indices
from utils.images import annotate
from utils.metrics import probabilities
from utils.misc import log_to_file, resolve_device
from utils.runlock import fresh_dir

from .setup.common import (
    build_loader,
    checkpoint_run_dir,
    model_from_checkpoint,
    preprocessor,
    source_dataset,
)

logger = logging.getLogger(__name__)


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
    if names is not None and names != list(spec.class_names):
        if len(names) != spec.num_classes:
            raise ValueError(f"--class_indices {cfg.class_indices} names {len(names)} classes, but {cfg.resume} "
                             f"has {spec.num_classes} outputs")
        logger.info("class names from %s (the checkpoint has %s)", cfg.class_indices, list(spec.class_names)[:10])
        spec = replace(spec, class_names=tuple(names))
    class_names = list(spec.class_names)
    model = model.to(device).eval()
    dataset = source_dataset(cfg, cfg.predict, "--predict", spec, skip_bad=True)  # skips are counted below
    paths = dataset.paths
    result = evaluate(model, build_loader(cfg, dataset, train=False, device=device),
                      preprocess=preprocessor(spec, device), dtype=amp_dtype(cfg.amp, cfg.amp_dtype, device),
                      progress=not cfg.no_progress, return_outputs=True, desc="predict")
    k = min(cfg.topk, len(class_names))
    rows = []
    if result["logits"].numel():  # else every image was unreadable
        top_p, top_i = probabilities(result["logits"], spec.head).topk(k, dim=1)
        rows = [(index, [(class_names[i], p) for p, i in zip(ps, ix)])
                for index, ps, ix in zip(result["indices"].tolist(), top_p.tolist(), top_i.tolist())]
    predicted = {index for index, _ in rows}
    failures = [(paths[i], dataset.failure(i)) for i in range(len(paths)) if i not in predicted]  # logged by dataset
    if not rows:
        raise ValueError(f"--predict: none of the {len(paths)} images of {cfg.predict} could be read (first: "
                         f"{failures[0][0]}: {failures[0][1]}); nothing was written")

    summary: dict[str, Any] = {"source": str(cfg.predict), "checkpoint": str(cfg.resume), "images": len(paths),
                               "predicted": len(rows), "unreadable": len(failures), "output_dir": str(out_dir)}
    if cfg.visualize:
        summary["annotated"] = str(save_annotated(dataset, rows, out_dir / "images"))
    if cfg.save_log:
        summary["log"] = str(write_log(out_dir / "predictions.log", [(paths[i], top) for i, top in rows], failures))
    csv_path = write_csv(out_dir / "predictions.csv", [(paths[i], top) for i, top in rows], k)  # last: complete
    summary["predictions"] = str(csv_path)
    logger.info("predicted %d of %d images from %s (%d unreadable); wrote %s", len(rows), len(paths), cfg.predict,
                len(failures), csv_path)
    return summary


def describe(top: Sequence[tuple[str, float]]) -> str:
    return ", ".join(f"{name} {p:.4f}" for name, p in top)


def write_csv(path: Path, rows: Sequence[tuple[Path, Sequence[tuple[str, float]]]], k: int) -> Path:
    """``path,class_1,prob_1,...,class_k,prob_k`` per image."""
    header = ["path"] + [f"{col}_{r}" for r in range(1, k + 1) for col in ("class", "prob")]
    with atomic_write(path, newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        for image, top in rows:
            writer.writerow([str(image)] + [v for name, p in top for v in (name, f"{p:.6f}")])
    return path


def write_log(path: Path, rows: Sequence[tuple[Path, Sequence[tuple[str, float]]]],
              failures: Sequence[tuple[Path, str]]) -> Path:
    """One human-readable line per image, unreadable ones included."""
    with atomic_write(path) as f:
        for image, top in rows:
            f.write(f"{image}\t{describe(top)}\n")
        for image, why in failures:
            f.write(f"{image}\tUNREADABLE: {why}\n")
    return path


def save_annotated(dataset: SourceImages, rows: Sequence[tuple[int, Sequence[tuple[str, float]]]],
                   folder: Path) -> Path:
    """Each predicted image, as decoded, with its top classes written under it."""
    folder.mkdir(parents=True, exist_ok=True)
    for index, top in rows:
        lines = [f"{name}: {p:.2%}" for name, p in top]
        save_image_atomic(annotate(dataset.load(index), lines), folder / f"{index:05d}_{dataset.paths[index].stem}.png")
    return folder
