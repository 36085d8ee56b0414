"""The one training loop and the one evaluation loop (plain functions returning metric dicts).

Every mode calls these rather than writing its own loop: EMA, distillation, curriculum weights and
mixing plug in through arguments (``ema``, ``batch_hook``), the LR range test and a SIGTERM through
``on_step`` / ``should_stop``. Nothing here reads the run's config.
"""
from __future__ import annotations

import contextlib
import logging
import math
import time
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn as nn
from tqdm import tqdm

from models.finetune import update_bn_stats
from optim import ModelEma, base_lr
from utils.checkpoint import kill_point
from utils.distributed import all_reduce_sum, gather_objects
from utils.metrics import class_tallies, hard_labels, macro_scores, topk_hits
from utils.multilabel import multilabel_report, tune_thresholds

from .distill import OnlineTeacher
from .precision import autocast
from .step_log import StepLog

logger = logging.getLogger(__name__)


def train_one_epoch(model: nn.Module, loader: torch.utils.data.DataLoader, criterion: nn.Module,
                    optimizer: torch.optim.Optimizer, *, preprocess: Callable[[torch.Tensor], torch.Tensor],
                    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None, epoch: int = 0,
                    scaler: torch.amp.GradScaler | None = None, dtype: torch.dtype | None = None,
                    accumulation_steps: int = 1, progress: bool = True, batch_hook: Callable | None = None,
                    ema: ModelEma | None = None, step_log: StepLog | None = None,
                    on_step: Callable[[int, float], bool] | None = None, clip_grad: float | None = None,
                    start_batch: int = 0, partial: dict[str, float] | None = None, multi_label: bool = False,
                    should_stop: Callable[[], bool] | None = None, readback_every: int | None = None,
                    save_point: Callable[[int, dict[str, float]], None] | None = None,
                    distiller: OnlineTeacher | None = None) -> dict[str, Any]:
    """One pass over ``loader``: forward, backward, an optimizer (and scheduler) step every ``accumulation_steps``
    micro-batches. Returns mean loss, top-1 on the hard labels, the LR of the last step, img/s, and the number of
    images skipped as undecodable.

    ``batch_hook(images, target, index, epoch, batch) -> (images, target, weight)`` applies per-batch strategies
    (soft targets, per-sample weights, mixing, rescaling); ``ema`` is updated after every optimizer step;
    ``clip_grad`` clips the gradient norm before it. ``on_step(steps, loss)`` and ``should_stop()`` are asked after
    each optimizer step: True ends the epoch there (the LR range test; a SIGTERM), and the result then says
    ``interrupted`` with ``batches_done`` and the running sums in ``partial``, from which a later call continues
    (``start_batch``, ``partial``; the loader's sampler must skip the same batches). ``save_point(batches_done,
    sums)`` is called after every optimizer step that neither ends nor stops the epoch, with this rank's running
    sums: a point where that same mid-epoch state may be saved (``--save_every_steps``); every rank calls it at the
    same steps. The loss and top-1 are read back from the device every ``readback_every`` batches (default: each
    batch on the CPU, every 10th on a GPU; see :class:`RunningSums`). ``multi_label``: multi-hot targets, top-1 is
    precision at 1. ``step_log`` (``--log_interval``) logs every N-th step; ``distiller``: :func:`_forward`.
    """
    model.train()
    device = preprocess.device if hasattr(preprocess, "device") else torch.device("cpu")
    sizes = batch_sizes(loader)
    n_batches = len(sizes)
    sums = dict(partial or {"loss": 0.0, "correct": 0, "seen": 0, "expected": 0})
    running = RunningSums(sums, readback_every or (1 if device.type == "cpu" else 10), epoch, dtype,
                          accumulation_steps)
    steps, seen_now, interrupted, batch, lr = 0, 0, False, start_batch, base_lr(optimizer)
    start = time.perf_counter()
    bar = tqdm(loader, desc=f"train {epoch}", disable=not progress, leave=False, dynamic_ncols=True)
    optimizer.zero_grad(set_to_none=True)
    for i, (images, target, index) in enumerate(bar if step_log is None else step_log.timed(bar, sums)):
        batch = start_batch + i
        sums["expected"] += sizes[i]
        group_start = i - i % accumulation_steps
        group_end = min(group_start + accumulation_steps, n_batches)
        if images.numel():
            images, target, weight = preprocess(images), target.to(device, non_blocking=True), None
            if batch_hook is not None:
                images, target, weight = batch_hook(images, target, index, epoch, batch)
            sync = i + 1 == group_end or not hasattr(model, "no_sync")  # DDP: all-reduce only when stepping
            logits, loss = _forward(model, criterion, distiller, images, target, weight, sync=sync, dtype=dtype)
            # Weight each micro-batch by its share of the group's samples, so that accumulating k batches
            # of b gives exactly the gradient of one batch of k*b (the last, smaller batch included).
            scaled = loss * (images.shape[0] / sum(sizes[group_start:group_end]))
            with contextlib.nullcontext() if sync else model.no_sync():
                (scaler.scale(scaled) if scaler is not None else scaled).backward()
            running.add(batch, loss, topk_hits(logits.detach(), target if multi_label else hard_labels(target))[0],
                        images.shape[0])
            seen_now += images.shape[0]
        if i + 1 == group_end:
            lr = base_lr(optimizer)  # the LR this step used (reported per epoch; per-group factors aside)
            _optimizer_step(model, optimizer, scaler=scaler, scheduler=scheduler, ema=ema, clip_grad=clip_grad)
            steps += 1
            if step_log is not None:
                step_log.step(epoch, batch, lr, running, seen_now)
            stop_early = on_step is not None and images.numel() and on_step(steps, loss.item())
            if stop_early or (should_stop is not None and should_stop()):
                interrupted = i + 1 < n_batches
                break
            if save_point is not None and i + 1 < n_batches:
                save_point(batch + 1, running.read())
        if progress and (i % 10 == 0 or i == n_batches - 1) and running.read()["seen"]:
            _show_progress(bar, sums, base_lr(optimizer), seen_now / (time.perf_counter() - start))
    running.read()
    elapsed = time.perf_counter() - start
    # every rank's sums (identity in a single process); ``partial`` stays this rank's own, for resuming
    loss_sum, correct, seen, expected, seen_all = all_reduce_sum(
        [sums["loss"], sums["correct"], sums["seen"], sums["expected"], seen_now], device)
    return {"loss": loss_sum / max(1, seen), "top1": 100.0 * correct / max(1, seen), "lr": lr,
            "img_per_s": seen_all / max(elapsed, 1e-9), "steps": steps, "time": elapsed,
            "skipped": int(expected - seen), "interrupted": interrupted, "batches_done": batch + 1, "partial": sums,
            **({"teacher_time": distiller.take_seconds()} if distiller is not None else {})}


def _forward(model: nn.Module, criterion: nn.Module, distiller: OnlineTeacher | None, images: torch.Tensor,
             target: torch.Tensor, weight: torch.Tensor | None, *, sync: bool,
             dtype: torch.dtype | None) -> tuple[torch.Tensor, torch.Tensor]:
    """The student's logits and loss on one batch (under DDP's ``no_sync`` unless ``sync``); with a
    ``distiller``, its teacher runs on the same images first and the loss is its blend."""
    taught = distiller.teach(images, dtype) if distiller is not None else None
    with (contextlib.nullcontext() if sync else model.no_sync()), autocast(images.device, dtype):
        logits = model(images)
        loss = criterion(logits, target, weight)
        if distiller is not None:
            loss = distiller.loss(loss, logits, taught)
    return logits, loss


class RunningSums:
    """The epoch's running loss and top-1 sums, read back from the device every ``every`` batches at once.

    Reading a GPU value (``loss.item()``, ``torch.isfinite(loss)`` as a bool) makes the CPU wait until the
    GPU has finished the step, so the next step's kernels are queued only then and the GPU idles meanwhile:
    three reads a step cost resnet50 8% of its training speed on an H200 (docs/performance.md). Each
    batch's values are kept as device tensors and read in one go; they are added in batch order, so the sums
    equal those of a read per batch. A non-finite loss is still reported with its own batch, up to
    ``every - 1`` batches later.
    """

    def __init__(self, sums: dict[str, float], every: int, epoch: int, dtype: torch.dtype | None,
                 accumulation_steps: int):
        self.sums, self.every, self.epoch, self.dtype = sums, max(1, every), epoch, dtype
        self.accumulation_steps = accumulation_steps
        self.pending: list[tuple[int, torch.Tensor, torch.Tensor, int]] = []

    def add(self, batch: int, loss: torch.Tensor, correct: torch.Tensor, n: int) -> None:
        """Batch ``batch``'s mean loss and number of top-1 hits over its ``n`` samples."""
        self.pending.append((batch, loss.detach().float(), correct, n))
        if len(self.pending) >= self.every:
            self.read()

    def read(self) -> dict[str, float]:
        """Add what is pending to the sums (one wait for the device) and return them."""
        if self.pending:
            losses = torch.stack([p[1] for p in self.pending]).tolist()
            corrects = torch.stack([p[2] for p in self.pending]).tolist()
            pending, self.pending = self.pending, []
            for (batch, _, _, n), loss, correct in zip(pending, losses, corrects):
                if not math.isfinite(loss):
                    raise non_finite_loss(f"the loss became {loss} at epoch {self.epoch + 1}, batch {batch + 1}",
                                          self.dtype, early=self.epoch == 0
                                          and batch < EARLY_STEPS * self.accumulation_steps)
                self.sums["loss"] += loss * n
                self.sums["correct"] += int(correct)
                self.sums["seen"] += n
        return self.sums


def _show_progress(bar: tqdm, sums: dict[str, float], lr: float, img_per_s: float) -> None:
    """The training bar's running loss, LR and speed."""
    bar.set_postfix(loss=f"{sums['loss'] / sums['seen']:.4f}", lr=f"{lr:.2e}", img_s=f"{img_per_s:.0f}")


def _optimizer_step(model: nn.Module, optimizer: torch.optim.Optimizer, *, scaler: torch.amp.GradScaler | None,
                    scheduler: torch.optim.lr_scheduler.LRScheduler | None, ema: ModelEma | None,
                    clip_grad: float | None) -> None:
    """One optimizer step on the accumulated gradients: clip (unscaled first under a scaler), step, clear the
    gradients, then advance the schedule and the EMA."""
    if clip_grad is not None:
        if scaler is not None:
            scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip_grad)
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    if scheduler is not None:
        scheduler.step()
    if ema is not None:
        ema.update(model)
    kill_point("step")  # tests: a SIGKILL between two steps


REDUCED_PRECISION = (torch.bfloat16, torch.float16)
EARLY_STEPS = 20  # a non-finite loss this early under bf16/fp16 points at the precision as much as at the LR


def non_finite_loss(what: str, dtype: torch.dtype | None = None, early: bool = False) -> FloatingPointError:
    """The error that stops training when a loss (training or validation) is inf or nan: ``what`` says
    which and where; the advice is the same for both. A run in bf16/fp16 (``dtype``) that fails in its first
    steps (``early``) is also told that the precision may be the cause: a gradient that fits float32 can
    overflow in half precision."""
    hint = ""
    if early and dtype in REDUCED_PRECISION:
        hint = (f"; this run computes in {str(dtype).removeprefix('torch.')} (--amp), which may be the cause this "
                f"early: rerun without --amp to tell")
    return FloatingPointError(f"{what}: training stopped, the last good checkpoint is kept; lower --lr or add "
                              f"--clip_grad (e.g. --clip_grad 5){hint}")


def batch_sizes(loader: torch.utils.data.DataLoader) -> list[int]:
    """The size of every batch ``loader`` will yield this epoch (known from its sampler)."""
    n, b = len(loader.sampler), loader.batch_size
    full, rest = divmod(n, b)
    return [b] * full + ([rest] if rest and not loader.drop_last else [])


@torch.no_grad()
def evaluate(model: nn.Module, loader: torch.utils.data.DataLoader, criterion: nn.Module | None = None, *,
             preprocess: Callable[[torch.Tensor], torch.Tensor], dtype: torch.dtype | None = None,
             progress: bool = False, return_outputs: bool = False, desc: str = "eval",
             multi_label: bool = False, thresholds: Sequence[float] | float = 0.5) -> dict[str, Any]:
    """Loss, top-1 and top-5 (percent) over ``loader``; with ``return_outputs`` also the logits,
    targets and dataset indices of every sample (CPU tensors, in loader order). A single-label evaluation
    also gives the macro F1 and the balanced accuracy (``macro_f1``, ``balanced_acc``, percent; from the
    per-class tallies, as ``utils.metrics.classification_report``): what ``--eval_metric`` may choose by.

    With ``multi_label`` (multi-hot targets) also mAP and, at the decision ``thresholds`` (one per class, or
    one for all), the overall and per-class F1 (``map``, ``of1``, ``cf1``, in percent; top-k: one of the
    image's labels among its top k), and the outputs are always returned: mAP needs every score at once."""
    model.eval()
    device = preprocess.device if hasattr(preprocess, "device") else torch.device("cpu")
    # per batch, on the device: read back once at the end (RunningSums says why); the per-class tallies summed
    losses, hits, sizes, tallies = [], [], [], None
    outputs: dict[str, list[torch.Tensor]] = {"logits": [], "targets": [], "indices": []}
    for images, target, index in tqdm(loader, desc=desc, disable=not progress, leave=False, dynamic_ncols=True):
        if not images.numel():
            continue
        images, target = preprocess(images), target.to(device, non_blocking=True)
        with autocast(device, dtype):
            logits = model(images)
        logits = logits.float()
        if criterion is not None:
            losses.append(criterion(logits, target).detach())
        hits.append(topk_hits(logits, target, (1, 5)))
        if not multi_label:
            counts = class_tallies(logits, target)
            tallies = counts if tallies is None else tallies + counts
        sizes.append(images.shape[0])
        if return_outputs or multi_label:
            outputs["logits"].append(logits.cpu())
            outputs["targets"].append(target.cpu())
            outputs["indices"].append(index)
    loss_sum = sum(loss * n for loss, n in zip(torch.stack(losses).tolist(), sizes)) if losses else 0.0
    top1, top5 = (sum(column) for column in zip(*torch.stack(hits).tolist())) if hits else (0, 0)
    seen = sum(sizes)
    # Under DDP each rank saw a disjoint, unpadded shard: the sums over ranks count every sample once.
    expected = sum(batch_sizes(loader))
    top1, top5, seen, loss_sum, expected = all_reduce_sum([top1, top5, seen, loss_sum, expected], device)
    result: dict[str, Any] = {"top1": 100.0 * top1 / max(1, seen), "top5": 100.0 * top5 / max(1, seen),
                              "count": int(seen), "skipped": int(expected - seen)}
    if criterion is not None:
        result["loss"] = loss_sum / max(1, seen)
    if not multi_label:
        result.update(tallies_summary(tallies, device))
    if return_outputs or multi_label:
        parts = gather_objects({k: torch.cat(v) if v else torch.empty(0) for k, v in outputs.items()})
        merged = {k: torch.cat([part[k] for part in parts if part[k].numel()]) if any(part[k].numel() for part in parts)
                  else torch.empty(0) for k in outputs}
        order = merged["indices"].argsort() if len(parts) > 1 else slice(None)
        result.update({k: v[order] for k, v in merged.items()})
    if multi_label:
        result.update(multilabel_summary(result["logits"], result["targets"], thresholds))
    return result


def tallies_summary(tallies: torch.Tensor | None, device: torch.device) -> dict[str, float]:
    """Macro F1 and balanced accuracy (percent) of this rank's per-class tallies summed over every rank (nan
    when no rank evaluated an image): 3 x C numbers to reduce, whatever the number of classes."""
    size, ranks = all_reduce_sum([0.0, 0.0] if tallies is None else [float(tallies.shape[1]), 1.0], device)
    if not ranks:
        return {"macro_f1": float("nan"), "balanced_acc": float("nan")}
    n = int(size / ranks)  # the number of classes (a rank that saw no image has no tallies)
    local = tallies.flatten().tolist() if tallies is not None else [0] * (3 * n)
    return macro_scores(np.asarray(all_reduce_sum(local, device), dtype=np.int64).reshape(3, n))


def tuned_summary(result: dict[str, Any]) -> dict[str, Any]:
    """``--tune_thresholds``: per class the max-F1 decision threshold on a multi-label evaluation's outputs
    (``thresholds``), and the F1s at them (on the split they were tuned on, so optimistic; mAP needs none)."""
    scores, truth = result["logits"].float().sigmoid().numpy(), result["targets"].numpy() > 0.5
    thresholds = tune_thresholds(scores, truth)
    return {"thresholds": [float(t) for t in thresholds],
            **{k: v for k, v in multilabel_summary(result["logits"], result["targets"], thresholds).items()
               if k != "map"}}


def multilabel_summary(logits: torch.Tensor, targets: torch.Tensor,
                       thresholds: Sequence[float] | float) -> dict[str, float]:
    """mAP, overall F1 and per-class F1 (percent) of multi-label ``logits`` against multi-hot ``targets``."""
    if not logits.numel():
        return {"map": float("nan"), "of1": float("nan"), "cf1": float("nan")}
    scores, truth = logits.float().sigmoid().numpy(), targets.numpy() > 0.5
    if not truth.any():
        raise ValueError(f"none of the {len(truth)} evaluated images has a label, so mAP is undefined: give the "
                         f"split images with labels (--allow_empty_labels admits images without any, not a split "
                         f"of them)")
    report = multilabel_report(scores, truth, thresholds, [str(i) for i in range(scores.shape[1])])
    return {"map": report["map"], "of1": report["OF1"], "cf1": report["CF1"]}


def precise_bn(model: nn.Module, loader: torch.utils.data.DataLoader, epoch: int, num_batches: int, *,
               preprocess: Callable[[torch.Tensor], torch.Tensor], dtype: torch.dtype | None) -> None:
    """``--precise_bn``: batch-norm statistics recomputed over the first ``num_batches`` batches of this
    epoch's training order (the same batches on a resumed run)."""
    loader.sampler.set_epoch(epoch)
    device = preprocess.device if hasattr(preprocess, "device") else torch.device("cpu")
    batches = (preprocess(images) for images, _, _ in loader if images.numel())
    with autocast(device, dtype):
        used = update_bn_stats(model, batches, num_batches)
    logger.info("--precise_bn: batch-norm statistics recomputed over %d training batches", used)

