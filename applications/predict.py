"""``--predict SOURCE --resume CKPT``: classify an image, a folder (recursive) or a txt list of images.

Writes ``<run_dir>/predict/predictions.csv``: the image path, then the class name and probability of
each of the ``--topk`` most likely classes (probabilities under the model's own head: softmax, or
sigmoid for ``bce``). With ``-v`` each image is also saved annotated with its predictions under
``predict/images/``; with ``-s`` every prediction is also written as a line of ``predict/predictions.log``.
Images that cannot be read are reported, skipped and counted in the summary.

Class names come from ``--class_indices FILE.json`` when given, else from the checkpoint.
"""
from __future__ import annotations

import argparse
import csv
import logging
import os
from pathlib import Path
from typing import Any, Sequence

import torch
from torch.utils.data import Dataset

from dataloader import ImageDecodeError, create_transform, decode_rgb
from dataloader.io import IMG_EXTENSIONS
from utils.annotate import annotate
from utils.checkpoint import load_checkpoint
from utils.class_indices import read_class_indices
from utils.metrics import probabilities
from utils.misc import log_to_file, resolve_device

from .common import amp_dtype, build_loader, checkpoint_run_dir, model_from_checkpoint, preprocessor
from .train import evaluate

logger = logging.getLogger(__name__)

def list_folder(folder: Path) -> list[Path]:
    """Every image under ``folder``, recursively, in a stable order (hidden files skipped)."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found += [Path(dirpath) / f for f in sorted(filenames)
                  if f.lower().endswith(IMG_EXTENSIONS) and not f.startswith(".")]
    return found


def read_list(file: Path) -> list[Path]:
    """Paths from a txt list: one per line, optionally followed by an integer label (ignored);
    relative paths resolve against the list's folder, blank lines and ``#`` comments are skipped."""
    paths = []
    for line in file.read_text().splitlines():
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        parts = text.rsplit(None, 1)
        if len(parts) == 2 and parts[1].lstrip("-").isdigit() and not _resolve(file, text).is_file():
            text = parts[0]
        paths.append(_resolve(file, text))
    return paths


def _resolve(file: Path, name: str) -> Path:
    return Path(name) if os.path.isabs(name) else file.parent / name


def collect_sources(source: str | Path) -> list[Path]:
    """The images of ``--predict``: a folder (recursive), a ``.txt`` list, or one image."""
    source = Path(source)
    if source.is_dir():
        paths = list_folder(source)
    elif source.suffix.lower() == ".txt":
        paths = read_list(source)
    elif source.is_file():
        paths = [source]
    else:
        raise FileNotFoundError(f"--predict: {str(source)!r} does not exist")
    if not paths:
        raise ValueError(f"--predict: no images in {source} ({', '.join(IMG_EXTENSIONS)})")
    return paths


class SourceImages(Dataset):
    """Images to classify, with the evaluation transform, for the one evaluation loop (``evaluate``).

    Labels are unknown (the target is always 0). An image that cannot be read comes out as None, which
    the loader's collate drops as it drops ``--skip_bad_images`` samples: the images missing from
    ``evaluate``'s indices are the unreadable ones.
    """

    def __init__(self, paths: Sequence[Path], transform: torch.nn.Module, max_pixels: int):
        self.paths, self.transform, self.max_pixels = list(paths), transform, max_pixels

    def __len__(self) -> int:
        return len(self.paths)

    def load(self, index: int) -> torch.Tensor:
        """The decoded image ``index``; raises ImageDecodeError (also over ``max_pixels``, from the header)
        or OSError when it cannot be read."""
        path = self.paths[index]
        return decode_rgb(path.read_bytes(), name=str(path), max_pixels=self.max_pixels)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, int, int] | None:
        index = key[0] if isinstance(key, tuple) else key
        try:
            return self.transform(self.load(index)), 0, index
        except (ImageDecodeError, OSError):
            return None

    def failure(self, index: int) -> str:
        """Why image ``index`` could not be read (without its path)."""
        try:
            self.load(index)
        except (ImageDecodeError, OSError) as e:
            return str(e).removeprefix(f"{self.paths[index]}: ")
        return "could not be read"


def resolve_class_names(cfg: argparse.Namespace) -> list[str] | None:
    """``--class_indices`` names, or None when the checkpoint's own names are to be used."""
    if cfg.class_indices:
        return read_class_indices(cfg.class_indices)
    if not load_checkpoint(cfg.resume).get("class_names"):
        raise ValueError(f"{cfg.resume} carries no class names: pass --class_indices FILE.json "
                         f"(a JSON list of names in label order, or {{\"0\": \"name\", ...}})")
    return None


def run(cfg: argparse.Namespace) -> dict[str, Any]:
    """Classify ``--predict`` with ``--resume`` and write the predictions to ``<run_dir>/predict/``."""
    out_dir = checkpoint_run_dir(cfg.resume) / "predict"
    out_dir.mkdir(parents=True, exist_ok=True)
    with log_to_file(out_dir.parent / "log.txt"):
        return predict(cfg, out_dir)


def predict(cfg: argparse.Namespace, out_dir: Path) -> dict[str, Any]:
    """Classify the images of ``cfg.predict`` and write the CSV (and annotations, log) to ``out_dir``."""
    paths = collect_sources(cfg.predict)
    names = resolve_class_names(cfg)
    device = resolve_device(cfg.device)
    model, model_cfg, class_names = model_from_checkpoint(cfg.resume, cfg, fallback_class_names=names or [])
    if names is not None and names != class_names:
        if len(names) != len(class_names):
            raise ValueError(f"--class_indices {cfg.class_indices} names {len(names)} classes, but {cfg.resume} "
                             f"has {len(class_names)} outputs")
        logger.info("class names from %s (the checkpoint has %s)", cfg.class_indices, class_names[:10])
        class_names = names
    model = model.to(device).eval()
    run_cfg = argparse.Namespace(**{**vars(cfg), **model_cfg})
    transform = create_transform(False, model_cfg["image_size"], eval_resize=model_cfg["eval_resize"],
                                 crop_pct=model_cfg["crop_pct"], interpolation=model_cfg["interpolation"])
    dataset = SourceImages(paths, transform, cfg.max_image_pixels)
    result = evaluate(model, build_loader(run_cfg, dataset, train=False, device=device),
                      preprocess=preprocessor(model_cfg, device), dtype=amp_dtype(cfg.amp, cfg.amp_dtype, device),
                      progress=not cfg.no_progress, return_outputs=True, desc="predict")
    k = min(cfg.topk, len(class_names))
    rows = []
    if result["logits"].numel():  # else every image was unreadable
        top_p, top_i = probabilities(result["logits"], model_cfg.get("criterion") or "softmax").topk(k, dim=1)
        rows = [(index, [(class_names[i], p) for p, i in zip(ps, ix)])
                for index, ps, ix in zip(result["indices"].tolist(), top_p.tolist(), top_i.tolist())]
    predicted = {index for index, _ in rows}
    failures = [(paths[i], dataset.failure(i)) for i in range(len(paths)) if i not in predicted]
    for path, why in failures:
        logger.warning("skipped unreadable image %s: %s", path, why)  # counted in the summary
    if not rows:
        raise ValueError(f"--predict: none of the {len(paths)} images of {cfg.predict} could be read (first: "
                         f"{failures[0][0]}: {failures[0][1]}); {out_dir} is left as it was")

    csv_path = write_csv(out_dir / "predictions.csv", [(paths[i], top) for i, top in rows], k)
    summary: dict[str, Any] = {"source": str(cfg.predict), "checkpoint": str(cfg.resume), "images": len(paths),
                               "predicted": len(rows), "unreadable": len(failures), "predictions": str(csv_path)}
    if cfg.visualize:
        summary["annotated"] = str(save_annotated(dataset, rows, out_dir / "images"))
    if cfg.save_log:
        summary["log"] = str(write_log(out_dir / "predictions.log", [(paths[i], top) for i, top in rows], failures))
    logger.info("predicted %d of %d images from %s (%d unreadable); wrote %s", len(rows), len(paths), cfg.predict,
                len(failures), csv_path)
    return summary


def describe(top: Sequence[tuple[str, float]]) -> str:
    return ", ".join(f"{name} {p:.4f}" for name, p in top)


def write_csv(path: Path, rows: Sequence[tuple[Path, Sequence[tuple[str, float]]]], k: int) -> Path:
    """``path,class_1,prob_1,...,class_k,prob_k`` per image."""
    header = ["path"] + [f"{col}_{r}" for r in range(1, k + 1) for col in ("class", "prob")]
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        for image, top in rows:
            writer.writerow([str(image)] + [v for name, p in top for v in (name, f"{p:.6f}")])
    return path


def write_log(path: Path, rows: Sequence[tuple[Path, Sequence[tuple[str, float]]]],
              failures: Sequence[tuple[Path, str]]) -> Path:
    """One human-readable line per image, unreadable ones included."""
    with open(path, "w") as f:
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
        annotate(dataset.load(index), lines).save(folder / f"{index:05d}_{dataset.paths[index].stem}.png")
    return folder
