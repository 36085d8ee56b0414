"""``--visual_data SPLIT`` / ``--visual_source PATH``: explain a checkpoint's predictions with CAM-family heatmaps.

    python main.py --visual_data test --visual_method grad-cam --resume output/resnet18/default/checkpoints/best.pth

For each image the model saw (after its own evaluation resize or crop), writes the image with the
heatmap overlaid and the true and predicted class above it, and a contact sheet of the first images of
each class:

    <run_dir>/visual/<method>/<split or 'source'>/<true class or 'unknown'>/<image stem>.png
    <run_dir>/visual/<method>/<split or 'source'>/gallery.png

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
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from torch.utils.data import Dataset
from tqdm import tqdm

from dataloader import DatasetError
from dataloader.sources import UNKNOWN_LABEL, SourceImages
from explain.cam import CamExplainer, Explanation
from explain.overlay import overlay_heatmap
from explain.pictures import UNKNOWN, class_interleaved, render_overlay
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
def visualize_dataset(cfg: argparse.Namespace, restored: Restored, dataset: Dataset, out_dir: Path, *, method: str,
                      target_layer: str | None = None, target_class: int | None = None,
                      limit: int | None = None, progress: bool = False) -> dict[str, Any]:
    """Write an overlay per image of ``dataset`` (uint8 images, labels, indices; label ``UNKNOWN_LABEL``: not known) and
    ``gallery.png`` under ``out_dir``; returns counts, accuracy on the labelled images and paths."""
    class_names, head = restored.class_names, restored.spec.head
    order = class_interleaved(dataset.targets, limit)
    loader = build_loader(cfg, Selection(dataset, order), train=False, device=restored.device)
    preprocess = preprocessor(restored.spec, restored.device)
    explained = None if target_class is None else class_names[target_class]
    arch, image_size = restored.spec.arch, restored.spec.image_size
    gallery: dict[str, list[tuple[np.ndarray, str, bool | None]]] = defaultdict(list)
    used: set[Path] = set()
    hf_rows = isinstance(dataset, SourceImages) and dataset.reader is not None  # samples named <split>/<row>
    written = correct = labelled = blank = 0
    start = time.perf_counter()
    with CamExplainer(restored.model, method, layer=target_layer, arch=arch, input_size=image_size) as explainer:
        for images, labels, indices in tqdm(loader, desc=f"{method} {dataset.split}", disable=not progress,
                                            leave=False, dynamic_ncols=True):
            if not images.numel():  # every image of the batch was skipped (--skip_bad_images)
                continue
            result = explainer(preprocess(images), target_class)
            if written == 0:
                logger.info("%s on layer %r of %s (%s maps)", method, explainer.layer, arch,
                            "x".join(map(str, result.feature_size)))
                _warn_if_coarse(result, explainer.layer, image_size, method)
            blank += blank_maps(result.heatmaps)
            probs = probabilities(result.logits, head)
            confidence, preds = probs.max(dim=1)
            for k in range(images.shape[0]):
                label, pred = int(labels[k]), int(preds[k])
                true_name = class_names[label] if label != UNKNOWN_LABEL else None
                picture = render_overlay(images[k], result.heatmaps[k], true_name=true_name,
                                         pred_name=class_names[pred], confidence=float(confidence[k]),
                                         explained=explained)
                name = dataset.samples[int(indices[k])][0]  # a file, or a Hugging Face row's <split>/<row>
                stem = name.replace("/", "_") if hf_rows else Path(name).stem
                save_png(picture, _unique_path(out_dir / _folder_name(true_name or UNKNOWN), stem, used))
                written += 1
                if label != UNKNOWN_LABEL:
                    labelled, correct = labelled + 1, correct + int(pred == label)
                group = true_name if true_name is not None else f"pred {class_names[pred]}"
                if len(gallery[group]) < GALLERY_COLUMNS:
                    tile = overlay_heatmap(upscale(to_hwc(images[k]), 96), result.heatmaps[k])
                    gallery[group].append((tile, class_names[pred], None if label == UNKNOWN_LABEL else pred == label))
        layer = explainer.layer
    _warn_if_blank(blank, written, layer, method)
    seconds = time.perf_counter() - start
    rows = [(name, gallery[name]) for name in [*class_names, *(f"pred {c}" for c in class_names)] if name in gallery]
    title = f"{method} on {layer} ({arch}), {dataset.split}" + (f", explaining {explained}" if explained else "")
    gallery_path = save_png(contact_sheet(rows, title=title), out_dir / "gallery.png")
    logger.info("%s: %d overlays and %s in %.1f s", method, written, gallery_path, seconds)
    summary = {"method": method, "split": dataset.split, "target_layer": layer, "images": written,
               "output_dir": str(out_dir), "gallery": str(gallery_path), "seconds": round(seconds, 2)}
    if labelled:
        summary["top1"] = 100.0 * correct / labelled
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
