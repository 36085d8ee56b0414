"""``--visual_data SPLIT`` / ``--visual_source PATH``: explain a checkpoint's predictions with CAM-family heatmaps.

    python main.py --visual_data test --visual_method grad-cam --resume output/resnet18/default/checkpoints/best.pth

For each image the model saw (after its own evaluation resize or crop), writes the image with the
heatmap overlaid and the true and predicted class above it, and a contact sheet of the first images of
each class:

    <run_dir>/visual/<method>/<split or 'source'>/<true class or 'unknown'>/<image stem>.png
    <run_dir>/visual/<method>/<split or 'source'>/gallery.png

A multi-label model (``--multi_label``) gets one picture per PREDICTED label of an image (each class whose
sigmoid score reaches the checkpoint's decision threshold, 0.5 unless tuned; the top class when none does),
filed under that label, titled with the true label set, the predicted one and the explained label with its
score (green: one of the image's labels, red: not); the gallery has a row per label:

    <run_dir>/visual/<method>/<split or 'source'>/<predicted label>/<image stem>.png

``--visual_class NAME`` explains that class instead of each image's prediction, ``--visual_limit N`` takes
the first N images (in turn from each class, so a small N still covers every class) and
``--target_layer NAME`` picks the layer (default: the family's last convolutional stage with maps of at
least 4 x 4, see ``models/cam_layers.py``). The methods themselves live in ``explain/cam.py``.
"""
from __future__ import annotations

import argparse
import logging
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset
from tqdm import tqdm

from dataloader import DatasetError
from dataloader.labels import label_names
from dataloader.sources import UNKNOWN_LABEL, SourceImages
from explain.cam import CamExplainer, Explanation
from explain.overlay import overlay_heatmap
from explain.pictures import (
    UNKNOWN,
    class_interleaved,
    explain_predicted,
    predicted_labels,
    render_label_overlay,
    render_overlay,
    score_text,
)
from utils.images import contact_sheet, save_png, to_hwc, upscale
from utils.metrics import probabilities
from utils.misc import log_to_file, resolve_device

from .setup.common import (
    Restored,
    build_dataset,
    build_loader,
    checkpoint_run_dir,
    data_class_names,
    model_from_checkpoint,
    preprocessor,
    restore_for_inference,
    source_dataset,
)

logger = logging.getLogger(__name__)

GALLERY_COLUMNS = 8   # images per class on the contact sheet


# ------------------------------------------------------------------------------------------------ inputs
class Selection(Dataset):
    """The samples of ``dataset`` at ``indices``, in that order; items keep the dataset's own index."""

    def __init__(self, dataset: Dataset, indices: Sequence[int]):
        self.dataset, self.indices = dataset, list(indices)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, key: int | tuple[int, int]) -> Any:
        position = key[0] if isinstance(key, tuple) else key
        return self.dataset[self.indices[position]]


def class_index(name: str | None, class_names: Sequence[str]) -> int | None:
    """The index of ``--visual_class NAME``; an unknown name is a ValueError listing the names."""
    if name is None:
        return None
    if name not in class_names:
        shown = ", ".join(class_names[:50]) + (", ..." if len(class_names) > 50 else "")
        raise ValueError(f"--visual_class {name!r} is not a class of this model; choose from: {shown}")
    return list(class_names).index(name)


def _restore(cfg: argparse.Namespace) -> Restored:
    """The checkpoint ready for inference. A split needs ``--data`` with the model's classes; a source
    image or folder does not: the checkpoint's own class names are used."""
    if cfg.visual_data:
        return restore_for_inference(cfg)
    try:
        fallback = data_class_names(cfg)
    except (DatasetError, FileNotFoundError, OSError):
        fallback = []
    device = resolve_device(cfg.device)
    model, spec = model_from_checkpoint(cfg.resume, cfg, fallback_class_names=fallback)
    if not spec.class_names:
        raise ValueError(f"{cfg.resume} carries no class names; pass --data with the dataset it was trained on")
    return Restored(model.to(device).eval(), spec, device)


# ----------------------------------------------------------------------------------------------- drawing
def _folder_name(class_name: str) -> str:
    """A class name as one folder name (names from classes.txt may hold path separators)."""
    return class_name.replace("/", "_").replace("\\", "_").strip(". ") or "_"


def _unique_path(folder: Path, stem: str, used: set[Path]) -> Path:
    path, k = folder / f"{stem}.png", 1
    while path in used:
        path, k = folder / f"{stem}_{k}.png", k + 1
    used.add(path)
    return path


MIN_MAP_SIDE = 4  # below this a heatmap is a few blocks (2 x 2: quadrants), not the shape of an object


def _warn_if_coarse(explanation: Explanation, layer: str | None, image_size: Sequence[int], method: str) -> None:
    """Say when the explained layer's maps are too small to locate anything (1 x 1, 2 x 2, 3 x 3)."""
    height, width = explanation.feature_size
    if min(height, width) >= MIN_MAP_SIDE:
        return
    what = ("carry no spatial information" if (height, width) == (1, 1)
            else f"are {height} x {width} blocks (quadrants), not shapes")
    fix = ("CAM is bound to the pooled feature map: use grad-cam with --target_layer set to an earlier stage"
           if method == "cam" else "set --target_layer to an earlier stage")
    logger.warning("layer %r gives %d x %d maps at input size %s: the heatmaps %s; %s, or use a larger --image_size",
                   layer, height, width, "x".join(map(str, image_size)), what, fix)


def blank_maps(heatmaps: np.ndarray) -> int:
    """How many of the N x H x W heatmaps are all zero (scaled from a constant map: nothing to draw)."""
    return int((heatmaps.reshape(len(heatmaps), -1).max(axis=1) <= 0).sum()) if len(heatmaps) else 0


def _warn_if_blank(blank: int, total: int, layer: str | None, method: str) -> None:
    """Say how many overlays show no heatmap at all (a Grad-CAM map is zero where the explained class's
    gradient is non-positive over the whole layer), rather than drawing them blank in silence."""
    if blank:
        logger.warning("%d of %d %s heatmaps on layer %r are all zero (the explained class's gradient gives this "
                       "layer no positive weight): those overlays show no heatmap; try --visual_method grad-cam++ "
                       "or another --target_layer", blank, total, method, layer)


# ------------------------------------------------------------------------------------------------- runs
@dataclass
class Picture:
    """One overlay to write: its folder (a class name) and its gallery row, tile caption and verdict."""
    folder: str
    image: int          # position of the image in its batch
    picture: np.ndarray
    heatmap: np.ndarray
    group: str
    caption: str
    correct: bool | None


def _single_label_pictures(images: torch.Tensor, labels: torch.Tensor, result: Explanation, head: str,
                           class_names: Sequence[str], explained: str | None,
                           temperature: float = 1.0) -> list[Picture]:
    """One picture per image, in the folder of its true class: its predicted class's (or ``explained``'s) map,
    captioned with its (calibrated: ``temperature``) confidence."""
    confidence, preds = probabilities(result.logits, head, temperature).max(dim=1)
    out = []
    for k in range(images.shape[0]):
        label, pred = int(labels[k]), int(preds[k])
        true_name = class_names[label] if label != UNKNOWN_LABEL else None
        picture = render_overlay(images[k], result.heatmaps[k], true_name=true_name, pred_name=class_names[pred],
                                 confidence=float(confidence[k]), explained=explained)
        out.append(Picture(true_name or UNKNOWN, k, picture, result.heatmaps[k],
                           true_name if true_name is not None else f"pred {class_names[pred]}", class_names[pred],
                           None if true_name is None else pred == label))
    return out


def _multi_label_pictures(images: torch.Tensor, labels: torch.Tensor, result: Explanation,
                          maps: list[list[tuple[int, np.ndarray]]], thresholds: Sequence[float],
                          class_names: Sequence[str]) -> list[Picture]:
    """One picture per explained label of each image (``maps``: its ``(class, heatmap)`` pairs), in the folder
    (and gallery row) of that label, titled with the true and the predicted label sets."""
    scores = result.logits.float().sigmoid()
    predicted = predicted_labels(scores, thresholds)
    known = labels.dim() == 2  # multi-hot targets; unlabelled source images carry UNKNOWN_LABEL
    out = []
    for k in range(images.shape[0]):
        truth = set(torch.nonzero(labels[k] > 0.5).flatten().tolist()) if known else None
        true_names = label_names(labels[k], class_names) if known else None
        pred_names = label_names(tuple(predicted[k]), class_names)
        for c, heatmap in maps[k]:
            correct = None if truth is None else c in truth
            picture = render_label_overlay(images[k], heatmap, true_names=true_names, pred_names=pred_names,
                                           label_name=class_names[c], score=float(scores[k, c]), correct=correct)
            out.append(Picture(class_names[c], k, picture, heatmap, class_names[c], score_text(float(scores[k, c])),
                               correct))
    return out


def _top1_hits(labels: torch.Tensor, logits: torch.Tensor) -> tuple[int, int]:
    """(labelled images, hits) of a batch: the top class is the label, or one of the labels (p@1)."""
    if labels.dim() == 2:
        return labels.shape[0], int(labels.gather(1, logits.argmax(dim=1, keepdim=True)).gt(0.5).sum())
    known = labels != UNKNOWN_LABEL
    return int(known.sum()), int((logits.argmax(dim=1)[known] == labels[known]).sum())


def visualize_dataset(cfg: argparse.Namespace, restored: Restored, dataset: Dataset, out_dir: Path, *, method: str,
                      target_layer: str | None = None, target_class: int | None = None,
                      limit: int | None = None, progress: bool = False) -> dict[str, Any]:
    """Write an overlay per image of ``dataset`` (uint8 images, labels, indices; label ``UNKNOWN_LABEL``: not known;
    for a multi-label model one per predicted label) and ``gallery.png`` under ``out_dir``; returns counts,
    top-1 (p@1 for a multi-label model) on the labelled images and paths."""
    class_names, spec = restored.class_names, restored.spec
    thresholds = spec.decision_thresholds
    loader = build_loader(cfg, Selection(dataset, class_interleaved(dataset.targets, limit)), train=False,
                          device=restored.device)
    preprocess = preprocessor(spec, restored.device)
    explained = None if target_class is None else class_names[target_class]
    gallery: dict[str, list[tuple[np.ndarray, str, bool | None]]] = defaultdict(list)
    used: set[Path] = set()
    hf_rows = isinstance(dataset, SourceImages) and dataset.reader is not None  # samples named <split>/<row>
    written = hits = labelled = blank = images_seen = 0
    start = time.perf_counter()
    with CamExplainer(restored.model, method, layer=target_layer, arch=spec.arch,
                      input_size=spec.image_size) as explainer:
        for images, labels, indices in tqdm(loader, desc=f"{method} {dataset.split}", disable=not progress,
                                            leave=False, dynamic_ncols=True):
            if not images.numel():  # every image of the batch was skipped (--skip_bad_images)
                continue
            if spec.multi_label and target_class is None:
                result, maps = explain_predicted(explainer, preprocess(images), thresholds)
            else:
                result = explainer(preprocess(images), target_class)
                maps = [[(target_class, heatmap)] for heatmap in result.heatmaps]
            pictures = (_multi_label_pictures(images, labels, result, maps, thresholds, class_names)
                        if spec.multi_label else
                        _single_label_pictures(images, labels, result, spec.head, class_names, explained,
                                                   spec.temperature))
            if images_seen == 0:
                logger.info("%s on layer %r of %s (%s maps)", method, explainer.layer, spec.arch,
                            "x".join(map(str, result.feature_size)))
                _warn_if_coarse(result, explainer.layer, spec.image_size, method)
            images_seen += images.shape[0]
            batch_labelled, batch_hits = _top1_hits(labels, result.logits)
            labelled, hits = labelled + batch_labelled, hits + batch_hits
            for p in pictures:
                name = dataset.samples[int(indices[p.image])][0]  # a file, or a Hugging Face row's <split>/<row>
                stem = name.replace("/", "_") if hf_rows else Path(name).stem
                save_png(p.picture, _unique_path(out_dir / _folder_name(p.folder), stem, used))
                blank += blank_maps(p.heatmap[None])
                if len(gallery[p.group]) < GALLERY_COLUMNS:
                    tile = overlay_heatmap(upscale(to_hwc(images[p.image]), 96), p.heatmap)
                    gallery[p.group].append((tile, p.caption, p.correct))
            written += len(pictures)
        layer = explainer.layer
    _warn_if_blank(blank, written, layer, method)
    seconds = time.perf_counter() - start
    rows = [(name, gallery[name]) for name in [*class_names, *(f"pred {c}" for c in class_names)] if name in gallery]
    title = f"{method} on {layer} ({spec.arch}), {dataset.split}" + (f", explaining {explained}" if explained else "")
    gallery_path = save_png(contact_sheet(rows, title=title), out_dir / "gallery.png")
    logger.info("%s: %d overlays of %d images and %s in %.1f s", method, written, images_seen, gallery_path, seconds)
    summary = {"method": method, "split": dataset.split, "target_layer": layer, "images": images_seen,
               "overlays": written, "output_dir": str(out_dir), "gallery": str(gallery_path),
               "seconds": round(seconds, 2)}
    if labelled:
        summary["top1"] = 100.0 * hits / labelled
    return summary


def run(cfg: argparse.Namespace) -> dict[str, Any]:
    """Explain ``--resume`` on ``--visual_data SPLIT`` of ``--data`` or on ``--visual_source PATH``."""
    run_dir = checkpoint_run_dir(cfg.resume, cfg.output, cfg.arch)
    run_dir.mkdir(parents=True, exist_ok=True)
    with log_to_file(run_dir / "log.txt"):
        restored = _restore(cfg)
        target_class = class_index(cfg.visual_class, restored.class_names)
        if cfg.visual_data:
            dataset = build_dataset(cfg, cfg.visual_data, restored.class_names, train=False, fallback=True,
                                    spec=restored.spec)
        else:
            dataset = source_dataset(cfg, cfg.visual_source, "--visual_source", restored.spec,
                                     skip_bad=bool(getattr(cfg, "skip_bad_images", False)))
        out_dir = run_dir / "visual" / cfg.visual_method / dataset.split
        return visualize_dataset(cfg, restored, dataset, out_dir, method=cfg.visual_method,
                                 target_layer=cfg.target_layer, target_class=target_class, limit=cfg.visual_limit,
                                 progress=not cfg.no_progress)
