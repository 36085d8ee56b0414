"""utils/plots.py's run pictures: training curves, the most confident errors, figures as tensors."""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from utils.plots import (
    figure_to_tensor,
    image_tensor,
    most_confident_errors,
    plot_training_curves,
    save_error_grid,
    training_curves_figure,
)


def history(epochs: int, ema: bool = False) -> list[dict]:
    rows = []
    for e in range(epochs):
        row = {"epoch": e, "train_loss": 2.0 / (e + 1), "train_top1": 40 + 10 * e, "lr": 0.1 * 0.5 ** e,
               "val_loss": 2.2 / (e + 1), "val_top1": 35 + 12 * e, "val_top5": 90.0, "img_per_s": 100.0, "time": 1.0}
        if ema:
            row.update(val_ema_loss=2.1 / (e + 1), val_ema_top1=36 + 12 * e)
        rows.append(row)
    return rows


def test_training_curves_png(tmp_path):
    for epochs, ema in ((1, False), (5, True)):
        path = plot_training_curves(history(epochs, ema), tmp_path / f"curves{epochs}.png")
        image = np.asarray(Image.open(path).convert("RGB"))
        assert image.shape[1] > 2 * image.shape[0] > 500  # three panels side by side
        assert image.std() > 20 and (image.min(axis=2) < 200).mean() > 0.01  # lines and text, not a blank page


def test_training_curves_use_a_log_loss_axis_and_integer_epoch_ticks():
    """An exploding val loss (6e12 at epoch 3, as in a real efficientnet-b0 run) must not flatten the train
    curve: the loss axis is logarithmic; epochs are whole numbers; a nan row is left out."""
    import matplotlib.pyplot as plt
    rows = history(4)
    rows[2]["val_loss"], rows[3]["val_loss"] = 6e12, float("nan")
    fig = training_curves_figure(rows)
    try:
        loss, top1, lr = fig.axes[:3]
        assert loss.get_yscale() == "log" and top1.get_yscale() == "linear" and lr.get_yscale() == "log"
        for ax in (loss, top1, lr):
            assert all(float(t).is_integer() for t in ax.get_xticks())
    finally:
        plt.close(fig)


def test_most_confident_errors_order():
    labels, preds = [0, 1, 2, 1, 0], [0, 2, 1, 0, 0]
    assert most_confident_errors(labels, preds, [0.9, 0.6, 0.95, 0.7, 0.99]) == [2, 3, 1]
    assert most_confident_errors(labels, preds, [0.9, 0.6, 0.95, 0.7, 0.99], n=1) == [2]
    assert most_confident_errors([1, 2], [1, 2], [0.5, 0.5]) == []


def test_error_grid_shows_the_most_confident_wrong_predictions(tmp_path):
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (3, 16, 16), dtype=np.uint8) for _ in range(6)]
    images[1] = torch.from_numpy(images[1])  # tensors and arrays alike
    true = ["cat", "dog", "cat", "bird", "dog", "cat"]
    pred = ["cat", "cat", "dog", "dog", "dog", "bird"]
    path = save_error_grid(images, true, pred, [0.9, 0.8, 0.99, 0.7, 0.6, 0.5], tmp_path / "errors.png", n=3)
    grid = np.asarray(Image.open(path).convert("RGB"))
    assert grid.shape[0] > 150 and grid.shape[1] > 3 * 150 and grid.std() > 20
    empty = save_error_grid(images[:1], ["cat"], ["cat"], [0.9], tmp_path / "none.png")
    assert empty.is_file() and empty.stat().st_size > 1000


def test_figure_and_png_to_tensor(tmp_path):
    from utils.plots import _pyplot, plot_confusion_matrix
    fig, ax = _pyplot().subplots(figsize=(2, 1), dpi=50)
    ax.plot([0, 1], [1, 0])
    t = figure_to_tensor(fig)
    assert t.dtype == torch.uint8 and tuple(t.shape) == (3, 50, 100)
    path = plot_confusion_matrix([[3, 1], [0, 4]], ["a", "b"], tmp_path / "cm.png")
    image = image_tensor(path)
    assert image.dtype == torch.uint8 and image.shape[0] == 3 and image.shape[1] > 100
