"""Titled CAM overlays of a model's predictions: one per image (``--visual_data``), and a few as one
batch for TensorBoard (the end of ``--train``).

A multi-label model (``spec.multi_label``) is explained once per PREDICTED label of an image: each class whose
sigmoid score reaches its decision threshold (``spec.decision_thresholds``), or the top class when none does
(:func:`predicted_labels`, :func:`explain_predicted`)."""
from __future__ import annotations

from collections import defaultdict
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn as nn
from torch.utils.data import Dataset

from dataloader.labels import label_names
from utils.images import BLACK, GREEN, RED, add_title, to_hwc, upscale
from utils.metrics import probabilities
from utils.multilabel import DEFAULT_THRESHOLD, label_sets

from .cam import CamExplainer, Explanation
from .overlay import overlay_heatmap

MIN_SIDE = 128        # small inputs (32 x 32 digits) are enlarged for reading
UNKNOWN = "unknown"   # the true class of an image without a label


def class_interleaved(targets: Sequence[int], limit: int | None = None) -> list[int]:
    """Dataset indices taking one image of each class in turn (dataset order within a class), first ``limit``."""
    by_class: dict[int, list[int]] = defaultdict(list)
    for index, label in enumerate(targets):
        by_class[label].append(index)
    queues = [by_class[c] for c in sorted(by_class)]
    order = [q[i] for i in range(max(map(len, queues), default=0)) for q in queues if i < len(q)]
    return order[:limit] if limit else order


def _verdict(correct: bool | None) -> tuple[int, int, int]:
    return BLACK if correct is None else (GREEN if correct else RED)


def render_overlay(image: torch.Tensor | np.ndarray, heatmap: np.ndarray, *, true_name: str | None,
                   pred_name: str, confidence: float, explained: str | None = None,
                   min_side: int = MIN_SIDE) -> np.ndarray:
    """The image (enlarged to ``min_side``) with its heatmap overlaid, under the true and predicted class."""
    picture = overlay_heatmap(upscale(to_hwc(image), min_side), heatmap)
    correct = None if true_name is None else true_name == pred_name
    lines = [f"true: {true_name or UNKNOWN}", f"pred: {pred_name} ({confidence:.2f})"]
    colors = [BLACK, _verdict(correct)]
    if explained is not None:
        lines.append(f"explains: {explained}")
        colors.append(BLACK)
    return add_title(picture, lines, colors)


def score_text(score: float) -> str:
    """A sigmoid score as text: two decimals, or two significant digits below 0.01 (tuned thresholds can be that
    low, and a predicted label shown as 0.00 reads as a bug)."""
    return f"{score:.2f}" if score >= 0.01 or score == 0 else f"{score:.1e}"


def render_label_overlay(image: torch.Tensor | np.ndarray, heatmap: np.ndarray, *, true_names: str | None,
                         pred_names: str, label_name: str, score: float, correct: bool | None,
                         min_side: int = MIN_SIDE) -> np.ndarray:
    """A multi-label image with the heatmap of one label (``label_name``, its sigmoid ``score``) overlaid, under
    the true label set, the predicted one and the explained label (green: one of the true labels, red: not)."""
    picture = overlay_heatmap(upscale(to_hwc(image), min_side), heatmap)
    lines = [f"true: {true_names or UNKNOWN}", f"pred: {pred_names}", f"label: {label_name} ({score_text(score)})"]
    return add_title(picture, lines, [BLACK, BLACK, _verdict(correct)])


def predicted_labels(scores: torch.Tensor, thresholds: Sequence[float]) -> list[list[int]]:
    """Each image's predicted labels, highest score first: the classes whose score (N x K sigmoid
    probabilities) reaches its threshold, or the top class alone when none does (an image is always explained)."""
    scores = scores.float().cpu()
    chosen = label_sets(scores.numpy(), list(thresholds))
    top = scores.argmax(dim=1).tolist()
    return [labels or [top[k]] for k, labels in enumerate(chosen)]


def explain_predicted(explainer: CamExplainer, images: torch.Tensor, thresholds: Sequence[float]
                      ) -> tuple[Explanation, list[list[tuple[int, np.ndarray]]]]:
    """The heatmap of every predicted label of every image (multi-label): ``(class, heatmap)`` per label, in
    :func:`predicted_labels` order, and the first pass's explanation (its logits). One pass explains each
    image's top class; a second, on the images repeated once per other label, the rest."""
    first = explainer(images)
    wanted = predicted_labels(first.logits.sigmoid(), thresholds)
    maps = {(k, first.classes[k]): first.heatmaps[k] for k in range(len(wanted))}
    extra = [(k, c) for k, labels in enumerate(wanted) for c in labels if (k, c) not in maps]
    if extra:
        more = explainer(images[[k for k, _ in extra]], [c for _, c in extra])
        maps.update({pair: more.heatmaps[i] for i, pair in enumerate(extra)})
    return first, [[(c, maps[(k, c)]) for c in labels] for k, labels in enumerate(wanted)]


def cam_overlays_for_tensorboard(model: nn.Module, dataset: Dataset, preprocess: Callable[[torch.Tensor], torch.Tensor],
                                 class_names: Sequence[str], *, arch: str | None = None, method: str = "grad-cam",
                                 target_layer: str | None = None, n: int = 4, head: str = "softmax",
                                 min_side: int = MIN_SIDE, thresholds: Sequence[float] | None = None) -> torch.Tensor:
    """``n`` titled overlays (one image of each class in turn) as a uint8 ``n x 3 x H x W`` batch for
    ``SummaryWriter.add_images``. The model's mode, parameters and gradients are left as they were. A multi-label
    dataset (``dataset.multi_label``) shows each image's top label, titled with the true and predicted label
    sets (at ``thresholds``, default 0.5 each)."""
    order = class_interleaved(dataset.targets, n)
    items = [item for item in (dataset[i] for i in order) if item is not None]
    images = torch.stack([item[0] for item in items])
    with CamExplainer(model, method, layer=target_layer, arch=arch, input_size=images.shape[-2:]) as explainer:
        result = explainer(preprocess(images))
    if getattr(dataset, "multi_label", False):
        scores = result.logits.float().sigmoid()
        predicted = predicted_labels(scores, thresholds or [DEFAULT_THRESHOLD] * len(class_names))
        pictures = [render_label_overlay(images[k], result.heatmaps[k],
                                         true_names=label_names(items[k][1], class_names),
                                         pred_names=label_names(tuple(predicted[k]), class_names),
                                         label_name=class_names[c], score=float(scores[k, c]),
                                         correct=bool(items[k][1][c] > 0.5), min_side=min_side)
                    for k, c in enumerate(result.classes)]
    else:
        confidence, preds = probabilities(result.logits, head).max(dim=1)
        pictures = [render_overlay(images[k], result.heatmaps[k], true_name=label_names(items[k][1], class_names),
                                   pred_name=class_names[int(preds[k])], confidence=float(confidence[k]),
                                   min_side=min_side) for k in range(len(items))]
    height, width = max(p.shape[0] for p in pictures), max(p.shape[1] for p in pictures)
    batch = np.full((len(pictures), height, width, 3), 255, np.uint8)  # titles may widen some: pad to one size
    for k, p in enumerate(pictures):
        batch[k, :p.shape[0], :p.shape[1]] = p
    return torch.from_numpy(batch).permute(0, 3, 1, 2).contiguous()
