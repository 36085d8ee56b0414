"""``--lr_finder``: the LR range test (Smith, 2017).

Trains from the initial weights with the LR growing exponentially from ``--lr_finder_min`` to
``--lr_finder_max`` over ``--lr_finder_steps`` optimizer steps, through the same ``train_one_epoch``
as training, and records the loss at each step. It stops early once the smoothed loss exceeds four
times its minimum. The suggested LR is where the smoothed loss falls fastest (the steepest negative
slope against log LR), as torch-lr-finder and fastai suggest, looked for only after the smoothing has
warmed up and never in the first or last tenth of the sweep (the first batches' own drop in loss would
otherwise make the sweep's first LR the steepest). Writes ``lr_finder.png`` and
``lr_finder.json`` to the run directory.
"""
from __future__ import annotations

import argparse
import logging
import math
from typing import Any

import numpy as np
import torch

from utils.atomic import write_json_atomic
from utils.distributed import DistInfo
from utils.misc import log_to_file, resolve_device
from utils.plots import plot_lr_finder

from .setup.common import apply_weights_preprocessing, check_num_classes, data_class_names, log_notes, run_dir_for
from .setup.training import build_training_parts

logger = logging.getLogger(__name__)
DIVERGENCE = 4.0
SMOOTHING = 0.9
WARMUP_POINTS = round(1 / (1 - SMOOTHING))  # the moving average's memory: noisier before it


def smooth(losses: list[float], beta: float = SMOOTHING) -> list[float]:
    """Bias-corrected exponential moving average of the losses."""
    avg, out = 0.0, []
    for i, loss in enumerate(losses, 1):
        avg = beta * avg + (1 - beta) * loss
        out.append(avg / (1 - beta ** i))
    return out


def suggest_lr(lrs: list[float], smoothed: list[float], planned_steps: int | None = None) -> float:
    """The LR where the smoothed loss falls fastest against log LR, before its minimum.

    Points in the first ``WARMUP_POINTS`` (the average is still warming up) and in the first or last tenth
    of the ``planned_steps`` sweep are never suggested; a sweep too short to leave three points falls
    back to those edges only, then to the LR of the smallest smoothed loss.
    """
    n = len(lrs)
    tenth = (planned_steps or n) // 10
    end = min(n, (planned_steps or n) - tenth)
    start = max(tenth, WARMUP_POINTS) if end - max(tenth, WARMUP_POINTS) >= 3 else tenth
    if end - start < 3:
        return float(lrs[int(np.argmin(smoothed))])
    window = np.asarray(smoothed)[start:end]
    slope = np.gradient(window, np.log(np.asarray(lrs[start:end])))
    stop = int(np.argmin(window)) + 1  # the steepest descent lies before the minimum
    return float(lrs[start + int(np.argmin(slope[:max(stop, 2)]))])


def run(cfg: argparse.Namespace) -> dict[str, Any]:
    notes = apply_weights_preprocessing(cfg)  # named --pretrained: in the cache (or an error) before anything starts
    run_dir = run_dir_for(cfg.output, cfg.arch, cfg.tag)
    run_dir.mkdir(parents=True, exist_ok=True)
    with log_to_file(run_dir / "log.txt"):
        log_notes(notes)  # the weights' provenance, in the run's log too
        device = resolve_device(cfg.device)
        class_names = data_class_names(cfg)
        check_num_classes(cfg.num_classes, class_names, cfg.data)
        # the training parts without --train's own options (validation, schedule, EMA, ...; see the builder)
        parts = build_training_parts(cfg, class_names, DistInfo(device=device), lr=cfg.lr_finder_min,
                                     train_options=False)
        steps = cfg.lr_finder_steps
        ratio = cfg.lr_finder_max / cfg.lr_finder_min
        parts.scheduler = torch.optim.lr_scheduler.LambdaLR(parts.optimizer,
                                                            lambda s: ratio ** (min(s, steps - 1) / (steps - 1)))
        lrs: list[float] = []
        losses: list[float] = []
        state = {"best": math.inf, "done": False}

        def on_step(_: int, loss: float) -> bool:
            lrs.append(ratio ** ((len(lrs)) / (steps - 1)) * cfg.lr_finder_min)
            losses.append(loss)
            smoothed = smooth(losses)[-1]
            state["best"] = min(state["best"], smoothed)
            state["done"] = len(losses) >= steps or not math.isfinite(loss) or smoothed > DIVERGENCE * state["best"]
            return state["done"]

        epoch = 0
        while not state["done"]:
            parts.train_loader.sampler.set_epoch(epoch)
            try:
                parts.train_epoch(epoch, progress=not cfg.no_progress, on_step=on_step)
            except FloatingPointError:
                break  # the loss diverged: exactly where the sweep is meant to end
            epoch += 1
        smoothed = smooth(losses)
        suggestion = suggest_lr(lrs, smoothed, planned_steps=steps)
        plot_lr_finder(lrs, losses, smoothed, suggestion, run_dir / "lr_finder.png")
        result = {"suggested_lr": suggestion, "min_loss_lr": lrs[int(np.argmin(smoothed))], "steps": len(lrs),
                  "plot": str(run_dir / "lr_finder.png")}
        write_json_atomic(run_dir / "lr_finder.json", {**result, "lrs": lrs, "losses": losses}, indent=1)
        logger.info("LR range test over %d steps: suggested LR %.3g (steepest descent); loss minimum at %.3g; "
                    "plot %s", len(lrs), suggestion, result["min_loss_lr"], result["plot"])
        return result
