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
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn as nn
from torch.utils.data import Dataset
from tqdm import tqdm

from dataloader import DatasetError, ImageDecodeError, create_transform, decode_rgb
from dataloader.io import DEFAULT_MAX_IMAGE_PIXELS, IMG_EXTENSIONS
from explain.cam import CamExplainer, Explanation
from utils.metrics import probabilities
from utils.misc import log_to_file, resolve_device
from explain.overlay import (BLACK, GREEN, RED, add_title, contact_sheet, overlay_heatmap, save_png, to_hwc,
                           upscale)

from .common import (Restored, build_dataset, build_loader, checkpoint_run_dir, data_class_names,
                     model_from_checkpoint, preprocessor, restore_for_inference)

logger = logging.getLogger(__name__)

MIN_SIDE = 128        # small inputs (32 x 32 digits) are enlarged for reading
GALLERY_COLUMNS = 8   # images per class on the contact sheet
UNKNOWN = "unknown"   # the true class of an image from --visual_source


# ------------------------------------------------------------------------------------------------ inputs
class SourceImages(Dataset):
    """Images from a file or a folder (recursive, hidden files skipped), with the evaluation transform;
    labels are unknown (-1). An image over ``max_pixels`` is refused from its header. With ``skip_bad`` an
    unreadable, undecodable or too large image is logged and yields None."""

    def __init__(self, path: str | Path, transform: Callable[[torch.Tensor], torch.Tensor], skip_bad: bool = False,
                 max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS):
        root = Path(path)
        files = [root] if root.is_file() else sorted(
            p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMG_EXTENSIONS
            and not any(part.startswith(".") for part in p.relative_to(root).parts))
        if not files:
            raise ValueError(f"--visual_source {path}: no images ({', '.join(IMG_EXTENSIONS)}) found")
        self.root, self.split, self.transform, self.skip_bad = root, "source", transform, skip_bad
        self.max_pixels = max_pixels
        self.samples = [(str(f), -1) for f in files]
        self.targets = [-1] * len(files)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, int, int] | None:
        index = key[0] if isinstance(key, tuple) else key
        path = self.samples[index][0]
        try:
            try:
                data = Path(path).read_bytes()
            except OSError as e:
                raise ImageDecodeError(f"{path}: cannot read ({e.strerror or e})") from None
            image = decode_rgb(data, name=path, max_pixels=self.max_pixels)
        except ImageDecodeError as e:
            if not self.skip_bad:
                raise ImageDecodeError(f"{e}; fix or remove it, or pass --skip_bad_images") from None
            logger.warning("skipping %s", e)
            return None
        return self.transform(image), -1, index


class Selection(Dataset):
    """The samples of ``dataset`` at ``indices``, in that order; items keep the dataset's own index."""

    def __init__(self, dataset: Dataset, indices: Sequence[int]):
        self.dataset, self.indices = dataset, list(indices)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, key: int | tuple[int, int]) -> Any:
        position = key[0] if isinstance(key, tuple) else key
        return self.dataset[self.indices[position]]


def class_interleaved(targets: Sequence[int], limit: int | None = None) -> list[int]:
    """Dataset indices taking one image of each class in turn (dataset order within a class), first ``limit``."""
    by_class: dict[int, list[int]] = defaultdict(list)
    for index, label in enumerate(targets):
        by_class[label].append(index)
    queues = [by_class[c] for c in sorted(by_class)]
    order = [q[i] for i in range(max(map(len, queues), default=0)) for q in queues if i < len(q)]
    return order[:limit] if limit else order


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
    model, model_cfg, class_names = model_from_checkpoint(cfg.resume, cfg, fallback_class_names=fallback)
    if not class_names:
        raise ValueError(f"{cfg.resume} carries no class names; pass --data with the dataset it was trained on")
    return Restored(model.to(device).eval(), model_cfg, class_names, device,
                    argparse.Namespace(**{**vars(cfg), **model_cfg}))


def _source_dataset(cfg: argparse.Namespace, path: str) -> SourceImages:
    transform = create_transform(False, cfg.image_size, eval_resize=cfg.eval_resize, crop_pct=cfg.crop_pct,
                                 interpolation=cfg.interpolation)
    return SourceImages(path, transform, skip_bad=bool(getattr(cfg, "skip_bad_images", False)),
                        max_pixels=cfg.max_image_pixels)


# ----------------------------------------------------------------------------------------------- drawing
def render_overlay(image: torch.Tensor | np.ndarray, heatmap: np.ndarray, *, true_name: str | None,
                   pred_name: str, confidence: float, explained: str | None = None,
                   min_side: int = MIN_SIDE) -> np.ndarray:
    """The image (enlarged to ``min_side``) with its heatmap overlaid, under the true and predicted class."""
    picture = overlay_heatmap(upscale(to_hwc(image), min_side), heatmap)
    correct = None if true_name is None else true_name == pred_name
    lines = [f"true: {true_name or UNKNOWN}", f"pred: {pred_name} ({confidence:.2f})"]
    colors = [BLACK, BLACK if correct is None else (GREEN if correct else RED)]
    if explained is not None:
        lines.append(f"explains: {explained}")
        colors.append(BLACK)
    return add_title(picture, lines, colors)


def _folder_name(class_name: str) -> str:
    """A class name as one folder name (names from classes.txt may hold path separators)."""
    return class_name.replace("/", "_").replace("\\", "_").strip(". ") or "_"


def _unique_path(folder: Path, stem: str, used: set[Path]) -> Path:
    path, k = folder / f"{stem}.png", 1
    while path in used:
        path, k = folder / f"{stem}_{k}.png", k + 1
    used.add(path)
    return path


def _warn_if_flat(explanation: Explanation, layer: str | None, image_size: Sequence[int], method: str) -> None:
    if tuple(explanation.feature_size) == (1, 1):
        fix = ("CAM is bound to the pooled feature map: use grad-cam with --target_layer set to an earlier stage"
               if method == "cam" else "set --target_layer to an earlier stage")
        logger.warning("layer %r gives 1 x 1 maps at input size %s: the heatmaps carry no spatial information; %s, "
                       "or use a larger --image_size", layer, "x".join(map(str, image_size)), fix)


# ------------------------------------------------------------------------------------------------- runs
def visualize_dataset(restored: Restored, dataset: Dataset, out_dir: Path, *, method: str,
                      target_layer: str | None = None, target_class: int | None = None,
                      limit: int | None = None, progress: bool = False) -> dict[str, Any]:
    """Write an overlay per image of ``dataset`` (uint8 images, labels, indices; label -1 = unknown) and
    ``gallery.png`` under ``out_dir``; returns counts, accuracy on the labelled images and paths."""
    cfg, class_names = restored.cfg, restored.class_names
    head = restored.model_cfg.get("criterion") or "softmax"
    order = class_interleaved(dataset.targets, limit)
    loader = build_loader(cfg, Selection(dataset, order), train=False, device=restored.device)
    preprocess = preprocessor(restored.model_cfg, restored.device)
    explained = None if target_class is None else class_names[target_class]
    arch = restored.model_cfg.get("arch")
    gallery: dict[str, list[tuple[np.ndarray, str, bool | None]]] = defaultdict(list)
    used: set[Path] = set()
    written = correct = labelled = 0
    start = time.perf_counter()
    with CamExplainer(restored.model, method, layer=target_layer, arch=arch, input_size=cfg.image_size) as explainer:
        for images, labels, indices in tqdm(loader, desc=f"{method} {dataset.split}", disable=not progress,
                                            leave=False, dynamic_ncols=True):
            if not images.numel():  # every image of the batch was skipped (--skip_bad_images)
                continue
            result = explainer(preprocess(images), target_class)
            if written == 0:
                logger.info("%s on layer %r of %s (%s maps)", method, explainer.layer, arch,
                            "x".join(map(str, result.feature_size)))
                _warn_if_flat(result, explainer.layer, cfg.image_size, method)
            probs = probabilities(result.logits, head)
            confidence, preds = probs.max(dim=1)
            for k in range(images.shape[0]):
                label, pred = int(labels[k]), int(preds[k])
                true_name = class_names[label] if label >= 0 else None
                picture = render_overlay(images[k], result.heatmaps[k], true_name=true_name,
                                         pred_name=class_names[pred], confidence=float(confidence[k]),
                                         explained=explained)
                stem = Path(dataset.samples[int(indices[k])][0]).stem
                save_png(picture, _unique_path(out_dir / _folder_name(true_name or UNKNOWN), stem, used))
                written += 1
                if label >= 0:
                    labelled, correct = labelled + 1, correct + int(pred == label)
                group = true_name if true_name is not None else f"pred {class_names[pred]}"
                if len(gallery[group]) < GALLERY_COLUMNS:
                    tile = overlay_heatmap(upscale(to_hwc(images[k]), 96), result.heatmaps[k])
                    gallery[group].append((tile, class_names[pred], None if label < 0 else pred == label))
        layer = explainer.layer
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
    run_dir = checkpoint_run_dir(cfg.resume)
    run_dir.mkdir(parents=True, exist_ok=True)
    with log_to_file(run_dir / "log.txt"):
        restored = _restore(cfg)
        target_class = class_index(cfg.visual_class, restored.class_names)
        if cfg.visual_data:
            dataset = build_dataset(restored.cfg, cfg.visual_data, restored.class_names, train=False, fallback=True)
        else:
            dataset = _source_dataset(restored.cfg, cfg.visual_source)
        out_dir = run_dir / "visual" / cfg.visual_method / dataset.split
        return visualize_dataset(restored, dataset, out_dir, method=cfg.visual_method, target_layer=cfg.target_layer,
                                 target_class=target_class, limit=cfg.visual_limit, progress=not cfg.no_progress)


# ----------------------------------------------------------------------------------------- TensorBoard
def cam_overlays_for_tensorboard(model: nn.Module, dataset: Dataset, preprocess: Callable[[torch.Tensor], torch.Tensor],
                                 class_names: Sequence[str], *, arch: str | None = None, method: str = "grad-cam",
                                 target_layer: str | None = None, n: int = 4, head: str = "softmax",
                                 min_side: int = MIN_SIDE) -> torch.Tensor:
    """``n`` titled overlays (one image of each class in turn) as a uint8 ``n x 3 x H x W`` batch for
    ``SummaryWriter.add_images``. The model's mode, parameters and gradients are left as they were."""
    order = class_interleaved(dataset.targets, n)
    items = [item for item in (dataset[i] for i in order) if item is not None]
    images = torch.stack([item[0] for item in items])
    with CamExplainer(model, method, layer=target_layer, arch=arch, input_size=images.shape[-2:]) as explainer:
        result = explainer(preprocess(images))
    confidence, preds = probabilities(result.logits, head).max(dim=1)
    pictures = [render_overlay(images[k], result.heatmaps[k], true_name=class_names[items[k][1]],
                               pred_name=class_names[int(preds[k])], confidence=float(confidence[k]),
                               min_side=min_side) for k in range(len(items))]
    height, width = max(p.shape[0] for p in pictures), max(p.shape[1] for p in pictures)
    batch = np.full((len(pictures), height, width, 3), 255, np.uint8)  # titles may widen some: pad to one size
    for k, p in enumerate(pictures):
        batch[k, :p.shape[0], :p.shape[1]] = p
    return torch.from_numpy(batch).permute(0, 3, 1, 2).contiguous()
