"""Plots written to files with matplotlib's Agg backend (no display needed)."""
from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np

if TYPE_CHECKING:  # annotations only: torch is imported where it is used
    import torch

from utils.atomic import atomic_path


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def save_figure(fig, path: str | Path, dpi: int = 100) -> Path:
    """Write a matplotlib figure atomically (its format from ``path``'s suffix, PNG without one) and close it."""
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, format=path.suffix.lstrip(".").lower() or "png")
    _pyplot().close(fig)
    return path


def plot_confusion_matrix(matrix: Sequence[Sequence[int]], class_names: Sequence[str], path: str | Path,
                          title: str = "Confusion matrix") -> Path:
    """A confusion matrix with class names on both axes and counts in the cells (rows = truth)."""
    plt = _pyplot()
    cm = np.asarray(matrix)
    n = len(class_names)
    side = min(30.0, max(5.0, 0.45 * n + 2))
    fig, ax = plt.subplots(figsize=(side, side))
    im = ax.imshow(cm, cmap="Blues")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    ax.set(xticks=range(n), yticks=range(n), xlabel="predicted", ylabel="true", title=title)
    ax.set_xticklabels(class_names, rotation=90 if n > 10 else 0)
    ax.set_yticklabels(class_names)
    if n <= 40:
        thresh = cm.max() / 2 if cm.size else 0
        for i in range(n):
            for j in range(n):
                ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=8,
                        color="white" if cm[i, j] > thresh else "black")
    fig.tight_layout()
    return save_figure(fig, path)


def plot_lr_finder(lrs: Sequence[float], losses: Sequence[float], smoothed: Sequence[float], suggestion: float,
                   path: str | Path) -> Path:
    """Loss against LR (log scale) from an LR range test, with the suggested LR marked."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.plot(lrs, losses, alpha=0.35, label="loss")
    ax.plot(lrs, smoothed, label="smoothed loss")
    ax.axvline(suggestion, color="red", linestyle="--", label=f"suggested lr {suggestion:.2g}")
    ax.set(xscale="log", xlabel="learning rate", ylabel="training loss", title="LR range test")
    finite = [v for v in smoothed if np.isfinite(v)]
    if finite:
        ax.set_ylim(min(finite) * 0.9, min(max(finite), 4 * min(finite)) * 1.1)
    ax.legend()
    fig.tight_layout()
    return save_figure(fig, path)


def plot_reliability(reliability: dict[str, Sequence], path: str | Path, title: str = "Reliability") -> Path:
    """A reliability diagram: each confidence bin's accuracy as a bar against the diagonal (perfect calibration),
    the gap to the bin's mean confidence shaded, and the share of images per bin below (``reliability``: the
    ``utils.calibration.reliability_bins`` table)."""
    plt = _pyplot()
    count = np.asarray(reliability["count"], dtype=float)
    accuracy, confidence = np.asarray(reliability["accuracy"]), np.asarray(reliability["confidence"])
    edges = np.linspace(0.0, 1.0, len(count) + 1)
    width, used = edges[1] - edges[0], count > 0
    fig, (ax, share) = plt.subplots(2, 1, figsize=(5.5, 6.5), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    ax.bar(edges[:-1][used], accuracy[used], width=width, align="edge", edgecolor="black", label="accuracy")
    ax.bar(edges[:-1][used], (confidence - accuracy)[used], bottom=accuracy[used], width=width, align="edge",
           color="tab:red", alpha=0.3, label="gap to confidence")
    ax.plot([0, 1], [0, 1], "k--", linewidth=1, label="perfectly calibrated")
    ax.set(ylabel="accuracy", xlim=(0, 1), ylim=(0, 1), title=title)
    ax.legend(loc="upper left")
    share.bar(edges[:-1], count / max(1.0, count.sum()), width=width, align="edge", edgecolor="black")
    share.set(xlabel="confidence (top probability)", ylabel="share of images")
    fig.tight_layout()
    return save_figure(fig, path)


def plot_risk_coverage(coverage: Sequence[float], risk: Sequence[float], path: str | Path,
                       point: tuple[float, float] | None = None, title: str = "Risk-coverage") -> Path:
    """The error rate among the images kept against the share kept, the least confident rejected first;
    ``point``: the (coverage, risk) of a chosen ``--reject_below``, marked."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4.5))
    ax.plot(coverage, risk, linewidth=1.5)
    if point is not None:
        ax.plot(*point, "o", color="tab:red", label=f"chosen threshold: coverage {point[0]:.2f}, risk {point[1]:.3f}")
        ax.legend(loc="upper left")
    ax.set(xlabel="coverage (share of images answered)", ylabel="risk (error rate among them)", xlim=(0, 1),
           ylim=(0, max(0.05, float(np.max(risk)) * 1.05 if len(risk) else 1.0)), title=title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return save_figure(fig, path)


def training_curves_figure(history: Sequence[dict]):
    """The figure of :func:`plot_training_curves`: loss (log scale, so an exploding val loss does not flatten
    the train curve), top-1 and learning rate (log scale) per epoch, on integer epoch ticks."""
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator
    epochs = [row["epoch"] + 1 for row in history]
    marker = "o" if len(history) < 30 else None
    panels = [("loss", [("train_loss", "train"), ("val_loss", "val"), ("val_ema_loss", "val EMA")], "log"),
              ("top-1 (%)", [("train_top1", "train"), ("val_top1", "val"), ("val_ema_top1", "val EMA")], "linear"),
              ("learning rate", [("lr", "lr")], "log")]
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    for ax, (ylabel, series, scale) in zip(axes, panels):
        values = []
        for key, label in series:
            points = [(e, row[key]) for e, row in zip(epochs, history)
                      if row.get(key) is not None and math.isfinite(row[key])]
            if points:
                ax.plot(*zip(*points), marker=marker, markersize=3, label=label)
                values += [v for _, v in points]
        if scale == "log" and values and min(values) > 0:
            ax.set_yscale("log")
        ax.set(xlabel="epoch", ylabel=ylabel)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0] and len(series) > 1:
            ax.legend()
    best = [row["val_top1"] for row in history if row.get("val_top1") is not None]
    fig.suptitle(f"{len(history)} epochs" + (f", best val top-1 {max(best):.2f}%" if best else ""))
    fig.tight_layout()
    return fig


def plot_training_curves(history: Sequence[dict], path: str | Path) -> Path:
    """Loss, top-1 and learning rate per epoch (train and val, EMA top-1 when present) from metrics.json's history."""
    fig = training_curves_figure(history)
    return save_figure(fig, path)


def most_confident_errors(labels: Sequence[int], preds: Sequence[int], confidences: Sequence[float],
                          n: int = 16) -> list[int]:
    """Positions of the wrong predictions, most confident first, at most ``n`` (to load only those images)."""
    labels, preds, conf = np.asarray(labels), np.asarray(preds), np.asarray(confidences, dtype=np.float64)
    wrong = np.flatnonzero(labels != preds)
    return wrong[np.argsort(-conf[wrong], kind="stable")][:n].tolist()


def save_error_grid(images: Sequence, true_names: Sequence[str], pred_names: Sequence[str],
                    confidences: Sequence[float], path: str | Path, n: int = 16) -> Path:
    """A grid of the ``n`` most confident wrong predictions, each titled with its true and predicted class.

    ``images`` are uint8 ``H x W x 3`` arrays or ``3 x H x W`` tensors; pairs whose names agree are skipped,
    so all predictions or only the wrong ones may be passed. With no wrong prediction the figure says so.
    """
    plt = _pyplot()
    order = most_confident_errors(true_names, pred_names, confidences, n)
    cols = min(4, max(1, len(order)))
    rows = max(1, -(-len(order) // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(2.6 * cols, 2.9 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, k in zip(axes.flat, order):
        ax.imshow(_hwc(images[k]), interpolation="nearest")
        ax.set_title(f"true: {true_names[k]}\npred: {pred_names[k]} ({confidences[k]:.2f})", fontsize=9,
                     color="firebrick")
    if not order:
        axes[0, 0].text(0.5, 0.5, "no wrong predictions", ha="center", va="center", fontsize=12)
    fig.suptitle(f"most confident errors ({len(order)} shown)")
    fig.tight_layout()
    return save_figure(fig, path)


def plot_per_class(class_names: Sequence[str], ap: Sequence[float | None], f1: Sequence[float], path: str | Path,
                   title: str = "per-class AP and F1") -> Path:
    """A multi-label model's per-class picture (what the confusion matrix is to a single-label one): AP and F1
    (percent) of each class as horizontal bars, classes top to bottom; a class without positives (AP undefined)
    is marked ``n/a``."""
    plt = _pyplot()
    n = len(class_names)
    y = np.arange(n)
    ap_values = [0.0 if a is None else float(a) for a in ap]
    fig, ax = plt.subplots(figsize=(7, min(30.0, max(3.0, 0.3 * n + 1.5))))
    ax.barh(y - 0.2, ap_values, height=0.4, label="AP", color="tab:blue")
    ax.barh(y + 0.2, list(f1), height=0.4, label="F1 at the thresholds", color="tab:orange")
    for i, a in enumerate(ap):
        if a is None:
            ax.text(1, i - 0.2, "n/a (no positives)", va="center", fontsize=7)
    ax.set(yticks=y, xlim=(0, 100), xlabel="percent", title=title)
    ax.set_yticklabels(class_names, fontsize=8 if n > 20 else 10)
    ax.invert_yaxis()
    ax.grid(axis="x", alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path)


def worst_scored(scores: np.ndarray, truth: np.ndarray, n: int = 2) -> list[tuple[list[int], list[int]]]:
    """Per class (multi-label), the samples it scores most wrongly: the ``n`` positives with the lowest score
    and the ``n`` negatives with the highest (positions into ``scores``, worst first; ties in sample order)."""
    scores, truth = np.asarray(scores, dtype=np.float64), np.asarray(truth, dtype=bool)
    out = []
    for k in range(scores.shape[1]):
        positives, negatives = np.flatnonzero(truth[:, k]), np.flatnonzero(~truth[:, k])
        low = positives[np.argsort(scores[positives, k], kind="stable")][:n]
        high = negatives[np.argsort(-scores[negatives, k], kind="stable")][:n]
        out.append((low.tolist(), high.tolist()))
    return out


def save_image_table(rows: Sequence[Sequence[tuple]], path: str | Path, title: str) -> Path:
    """A grid of captioned images, row by row: each cell ``(image, caption, wrong)``, its caption in red
    when ``wrong`` (e.g. a misclassification); rows may be ragged (short rows leave empty cells)."""
    plt = _pyplot()
    cols = max([1] + [len(row) for row in rows])
    fig, axes = plt.subplots(max(1, len(rows)), cols, figsize=(2.4 * cols, 2.7 * max(1, len(rows))), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for r, row in enumerate(rows):
        for c, (image, caption, wrong) in enumerate(row):
            axes[r, c].imshow(_hwc(image), interpolation="nearest")
            axes[r, c].set_title(caption, fontsize=8, color="firebrick" if wrong else "black")
    if not any(rows):
        axes[0, 0].text(0.5, 0.5, "nothing to show", ha="center", va="center", fontsize=12)
    fig.suptitle(title)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.5 / fig.get_figheight()))  # the title's band: clear of the first row
    return save_figure(fig, path)


def _hwc(image) -> np.ndarray:
    """A uint8 image as ``H x W x 3`` (``3 x H x W`` tensors and arrays are transposed)."""
    array = image.detach().cpu().numpy() if hasattr(image, "detach") else np.asarray(image)
    if array.ndim == 3 and array.shape[0] in (1, 3) and array.shape[-1] not in (1, 3):
        array = array.transpose(1, 2, 0)
    return array.squeeze(-1) if array.ndim == 3 and array.shape[-1] == 1 else array


def figure_to_tensor(fig) -> "torch.Tensor":
    """A matplotlib figure rendered to a uint8 ``3 x H x W`` tensor (for ``SummaryWriter.add_image``); closes it."""
    import torch
    plt = _pyplot()
    fig.canvas.draw()
    rgba = np.asarray(fig.canvas.buffer_rgba())
    plt.close(fig)
    return torch.from_numpy(rgba[..., :3].copy()).permute(2, 0, 1).contiguous()


def image_tensor(path: str | Path) -> "torch.Tensor":
    """A written plot (PNG) read back as a uint8 ``3 x H x W`` tensor, e.g. confusion_matrix.png for TensorBoard."""
    import torch
    from PIL import Image
    with Image.open(path) as im:
        array = np.array(im.convert("RGB"))
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()
