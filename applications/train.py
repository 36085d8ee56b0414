"""``--train``: the one training loop and the one evaluation loop, and the run that drives them.

``train_one_epoch`` and ``evaluate`` are plain functions returning metric dicts; every other
application calls them rather than writing its own loop.
"""
from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import logging
import math
import shutil
import signal
import threading
import time
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn as nn
import yaml
from PIL import Image
from tqdm import tqdm

from config import config_conflicts, config_to_dict, save_config
from criterions import create_criterion
from dataloader.enhancement import make_augmented_grid
from dataloader.loader import start_workers
from models import create_model, extract_state_dict, load_state_dict_checked
from models.memory import enable_gradient_checkpointing
from optim import ModelEma, create_scheduler
from utils.checkpoint import (CheckpointError, capture_rng_state, link_checkpoint, load_checkpoint, previous_path,
                              restore_rng_state, save_checkpoint)
from utils.metrics import hard_labels, topk_correct
from utils.distributed import (DistInfo, all_reduce_sum, any_rank, barrier, cleanup, gather_objects,
                               init_distributed)
from utils.misc import log_to_file, seed_everything
from utils.tracking import RunRecorder

from .common import (amp_dtype, autocast, build_dataset, build_loader, check_num_classes, data_class_names,
                     preprocessor, run_dir_for)
from .strategies import build_batch_hook, build_criterion, build_optimizer, build_policy

logger = logging.getLogger(__name__)


def train_one_epoch(model: nn.Module, loader: torch.utils.data.DataLoader, criterion: nn.Module,
                    optimizer: torch.optim.Optimizer, *, preprocess: Callable[[torch.Tensor], torch.Tensor],
                    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
                    scaler: torch.amp.GradScaler | None = None, dtype: torch.dtype | None = None,
                    accumulation_steps: int = 1, epoch: int = 0, progress: bool = True,
                    batch_hook: Callable | None = None, ema: ModelEma | None = None,
                    on_step: Callable[[int, float], bool] | None = None, clip_grad: float | None = None,
                    start_batch: int = 0, partial: dict[str, float] | None = None,
                    should_stop: Callable[[], bool] | None = None) -> dict[str, Any]:
    """One pass over ``loader``: forward, backward, an optimizer (and scheduler) step every
    ``accumulation_steps`` micro-batches. Returns mean loss, top-1 on the hard labels, the LR of the
    last step, img/s, and the number of images skipped as undecodable.

    ``batch_hook(images, target, index, epoch, batch) -> (images, target, weight)`` applies per-batch
    strategies (soft targets, per-sample weights, mixing, rescaling); ``ema`` is updated after every
    optimizer step; ``clip_grad`` clips the gradient norm before it. ``on_step(steps, loss)`` and
    ``should_stop()`` are asked after each optimizer step: True ends the epoch there (the LR range test;
    a SIGTERM), and the result then says ``interrupted`` with ``batches_done`` and the running sums in
    ``partial``, from which a later call continues (``start_batch``, ``partial``; the loader's sampler
    must skip the same batches).
    """
    model.train()
    device = preprocess.device if hasattr(preprocess, "device") else torch.device("cpu")
    sizes = batch_sizes(loader)
    n_batches = len(sizes)
    sums = dict(partial or {"loss": 0.0, "correct": 0, "seen": 0, "expected": 0})
    steps, seen_now, interrupted, batch = 0, 0, False, start_batch
    lr = optimizer.param_groups[0]["lr"]
    start = time.perf_counter()
    bar = tqdm(loader, desc=f"train {epoch}", disable=not progress, leave=False, dynamic_ncols=True)
    optimizer.zero_grad(set_to_none=True)
    for i, (images, target, index) in enumerate(bar):
        batch = start_batch + i
        sums["expected"] += sizes[i]
        group_start = i - i % accumulation_steps
        group_end = min(group_start + accumulation_steps, n_batches)
        if images.numel():
            images, target, weight = preprocess(images), target.to(device, non_blocking=True), None
            if batch_hook is not None:
                images, target, weight = batch_hook(images, target, index, epoch, batch)
            sync = i + 1 == group_end or not hasattr(model, "no_sync")  # DDP: all-reduce only when stepping
            with (contextlib.nullcontext() if sync else model.no_sync()), autocast(device, dtype):
                logits = model(images)
                loss = criterion(logits, target, weight)
            if not torch.isfinite(loss):
                raise FloatingPointError(
                    f"the loss became {loss.item()} at epoch {epoch + 1}, batch {batch + 1}: training stopped, "
                    f"the last good checkpoint is kept; lower --lr or add --clip_grad (e.g. --clip_grad 5)")
            # Weight each micro-batch by its share of the group's samples, so that accumulating k batches
            # of b gives exactly the gradient of one batch of k*b (the last, smaller batch included).
            scaled = loss * (images.shape[0] / sum(sizes[group_start:group_end]))
            with contextlib.nullcontext() if sync else model.no_sync():
                (scaler.scale(scaled) if scaler is not None else scaled).backward()
            n = images.shape[0]
            sums["loss"] += loss.item() * n
            sums["correct"] += topk_correct(logits.detach(), hard_labels(target), (1,))[0]
            sums["seen"] += n
            seen_now += n
        if i + 1 == group_end:
            lr = optimizer.param_groups[0]["lr"]  # the LR this step used (reported per epoch)
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
            steps += 1
            if scheduler is not None:
                scheduler.step()
            if ema is not None:
                ema.update(model)
            stop_early = on_step is not None and images.numel() and on_step(steps, loss.item())
            if stop_early or (should_stop is not None and should_stop()):
                interrupted = i + 1 < n_batches
                break
        if progress and sums["seen"] and (i % 10 == 0 or i == n_batches - 1):
            bar.set_postfix(loss=f"{sums['loss'] / sums['seen']:.4f}", lr=f"{optimizer.param_groups[0]['lr']:.2e}",
                            img_s=f"{seen_now / (time.perf_counter() - start):.0f}")
    elapsed = time.perf_counter() - start
    # every rank's sums (identity in a single process); ``partial`` stays this rank's own, for resuming
    loss_sum, correct, seen, expected, seen_all = all_reduce_sum(
        [sums["loss"], sums["correct"], sums["seen"], sums["expected"], seen_now], device)
    return {"loss": loss_sum / max(1, seen), "top1": 100.0 * correct / max(1, seen), "lr": lr,
            "img_per_s": seen_all / max(elapsed, 1e-9), "steps": steps, "time": elapsed,
            "skipped": int(expected - seen), "interrupted": interrupted, "batches_done": batch + 1,
            "partial": sums}


def batch_sizes(loader: torch.utils.data.DataLoader) -> list[int]:
    """The size of every batch ``loader`` will yield this epoch (known from its sampler)."""
    n, b = len(loader.sampler), loader.batch_size
    full, rest = divmod(n, b)
    return [b] * full + ([rest] if rest and not loader.drop_last else [])


@torch.no_grad()
def evaluate(model: nn.Module, loader: torch.utils.data.DataLoader, criterion: nn.Module | None = None, *,
             preprocess: Callable[[torch.Tensor], torch.Tensor], dtype: torch.dtype | None = None,
             progress: bool = False, return_outputs: bool = False, desc: str = "eval") -> dict[str, Any]:
    """Loss, top-1 and top-5 (percent) over ``loader``; with ``return_outputs`` also the logits,
    targets and dataset indices of every sample (CPU tensors, in loader order)."""
    model.eval()
    device = preprocess.device if hasattr(preprocess, "device") else torch.device("cpu")
    loss_sum, top1, top5, seen = 0.0, 0, 0, 0
    outputs: dict[str, list[torch.Tensor]] = {"logits": [], "targets": [], "indices": []}
    for images, target, index in tqdm(loader, desc=desc, disable=not progress, leave=False, dynamic_ncols=True):
        if not images.numel():
            continue
        images, target = preprocess(images), target.to(device, non_blocking=True)
        with autocast(device, dtype):
            logits = model(images)
        logits = logits.float()
        if criterion is not None:
            loss_sum += criterion(logits, target).item() * images.shape[0]
        c1, c5 = topk_correct(logits, target, (1, 5))
        top1, top5, seen = top1 + c1, top5 + c5, seen + images.shape[0]
        if return_outputs:
            outputs["logits"].append(logits.cpu())
            outputs["targets"].append(target.cpu())
            outputs["indices"].append(index)
    # Under DDP each rank saw a disjoint, unpadded shard: the sums over ranks count every sample once.
    expected = sum(batch_sizes(loader))
    top1, top5, seen, loss_sum, expected = all_reduce_sum([top1, top5, seen, loss_sum, expected], device)
    result: dict[str, Any] = {"top1": 100.0 * top1 / max(1, seen), "top5": 100.0 * top5 / max(1, seen),
                              "count": int(seen), "skipped": int(expected - seen)}
    if criterion is not None:
        result["loss"] = loss_sum / max(1, seen)
    if return_outputs:
        parts = gather_objects({k: torch.cat(v) if v else torch.empty(0) for k, v in outputs.items()})
        merged = {k: torch.cat([part[k] for part in parts if part[k].numel()]) if any(part[k].numel() for part in parts)
                  else torch.empty(0) for k in outputs}
        order = merged["indices"].argsort() if len(parts) > 1 else slice(None)
        result.update({k: v[order] for k, v in merged.items()})
    return result


def checkpoint_state(model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any,
                     scaler: torch.amp.GradScaler | None, *, epoch: int, best_top1: float,
                     class_names: list[str], cfg: argparse.Namespace, history: list[dict],
                     criterion: nn.Module | None = None, ema: ModelEma | None = None) -> dict[str, Any]:
    """Everything needed to resume exactly: weights (and their EMA), optimizer, schedule, scaler, the
    loss's own state (GHM's moving averages), RNG, bookkeeping."""
    return {
        "model": model.state_dict(),
        "model_ema": ema.module.state_dict() if ema is not None else None,
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None else None,
        "criterion": criterion.state_dict() if criterion is not None else {},
        "epoch": epoch,
        "best_top1": best_top1,
        "rng": capture_rng_state(),
        "class_names": list(class_names),
        "arch": cfg.arch,
        "config": config_to_dict(cfg),
        "history": history,
    }


def _prepare_run_dir(cfg: argparse.Namespace, run_dir: Path) -> Path | None:
    """Decide whether this run resumes; returns the checkpoint to resume from, or None.

    A rerun of the same command resumes from ``last.pth``; different flags in an existing run
    directory are refused unless ``--resume`` or ``--overwrite`` says what to do.
    """
    last = run_dir / "checkpoints" / "last.pth"
    if cfg.resume:
        return Path(cfg.resume)
    if cfg.overwrite:
        logger.info("--overwrite: starting afresh in %s", run_dir)
        for child in run_dir.iterdir():
            if child.name != "log.txt":  # the log of this very run is already open
                shutil.rmtree(child) if child.is_dir() else child.unlink()
        return None
    saved_cfg = run_dir / "config.yaml"
    if saved_cfg.is_file() and (last.is_file() or previous_path(last).is_file()):
        conflicts = config_conflicts(yaml.safe_load(saved_cfg.read_text()) or {}, cfg)
        if conflicts:
            diff = "; ".join(f"--{k}: {a!r} -> {b!r}" for k, (a, b) in conflicts.items())
            raise ValueError(f"run directory {run_dir} holds a run with other settings ({diff}); use another "
                             f"--tag, pass --overwrite to start afresh, or --resume to continue from a checkpoint")
        return last
    return None


def load_resume_checkpoint(path: Path) -> tuple[dict[str, Any], Path]:
    """Load the checkpoint to resume from; a missing, corrupt or truncated one is reported and the
    previous one (``last.pth.prev``) used instead, when there is one."""
    try:
        return load_checkpoint(path), path
    except CheckpointError as e:
        prev = previous_path(path)
        if not prev.is_file():
            raise
        logger.error("%s; falling back to the previous checkpoint %s", e, prev)
        return load_checkpoint(prev), prev


class StopRequest:
    """Turns the first SIGINT/SIGTERM into a request to stop after the current optimizer step (a second
    one interrupts at once); the handlers are restored on exit."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        logger.warning("%s received: finishing the current step, then saving last.pth (again to stop at once)",
                       signal.Signals(signum).name)

    def __enter__(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def __call__(self) -> bool:
        return self.requested


def _pictures(cfg: argparse.Namespace, run_dir: Path, history: list[dict], model: nn.Module, test_set: Any,
              preprocess: Callable, class_names: list[str], split: str) -> None:
    """curves.png, and the confusion matrix and a few CAM overlays of the test split in TensorBoard."""
    from utils.plots import image_tensor, plot_training_curves
    from .visualize import cam_overlays_for_tensorboard
    if history:
        plot_training_curves(history, run_dir / "curves.png")
    writer = _tensorboard(run_dir, cfg.epochs)
    try:
        writer.add_image(f"{split}/confusion_matrix", image_tensor(run_dir / f"eval_{split}" / "confusion_matrix.png"),
                         cfg.epochs)
        try:
            overlays = cam_overlays_for_tensorboard(model, test_set, preprocess, class_names, arch=cfg.arch,
                                                    target_layer=cfg.target_layer, head=cfg.criterion, n=4)
            writer.add_images(f"{split}/cam_overlays", overlays, cfg.epochs)
        except ValueError as e:  # e.g. a layer without N x C x H x W maps: the run itself is fine
            logger.warning("no CAM overlays in TensorBoard: %s", e)
    finally:
        writer.close()


def _stop_check(stop: StopRequest, device: torch.device, every: int) -> Callable[[], bool]:
    """``should_stop`` for train_one_epoch: under DDP the ranks agree (one all-reduce) every ``every``
    steps, the same steps on every rank, so all stop together without a sync point at each step."""
    count = itertools.count(1)
    return lambda: next(count) % every == 0 and any_rank(stop.requested, device)


def _tensorboard(run_dir: Path, start_epoch: int):
    from torch.utils.tensorboard import SummaryWriter
    return SummaryWriter(log_dir=str(run_dir / "tensorboard"), purge_step=start_epoch + 1)


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2))
    tmp.replace(path)


def run(cfg: argparse.Namespace) -> dict[str, Any]:
    """Train ``cfg.arch`` on ``cfg.data``, checkpoint every epoch, then evaluate best.pth on the test split.

    Under ``torchrun`` every process trains its shard with DistributedDataParallel; rank 0 alone
    writes files (its log file included).
    """
    info = init_distributed(cfg.device)
    run_dir = run_dir_for(cfg.output, cfg.arch, cfg.tag)
    try:
        if not info.is_main:
            logging.getLogger().setLevel(logging.WARNING)
            return _train(cfg, run_dir, info)
        run_dir.mkdir(parents=True, exist_ok=True)
        with log_to_file(run_dir / "log.txt"):
            try:
                return _train(cfg, run_dir, info)
            except Exception:  # keep the traceback in the run's own log too
                logger.debug("training failed", exc_info=True)
                raise
    finally:
        cleanup()


def _train(cfg: argparse.Namespace, run_dir: Path, info: DistInfo) -> dict[str, Any]:
    device, main = info.device, info.is_main
    class_names = data_class_names(cfg)
    num_classes = check_num_classes(cfg.num_classes, class_names, cfg.data)
    resume_from = _prepare_run_dir(cfg, run_dir) if main else None
    resume_from = gather_objects(resume_from)[0]  # rank 0 decides, every rank follows
    if main:
        save_config(cfg, run_dir / "config.yaml")
    global_batch = cfg.batch_size * info.world_size * cfg.accumulation_steps
    lr = cfg.lr * global_batch / cfg.lr_base_batch if cfg.lr_scale == "linear" else cfg.lr
    logger.info("run directory %s, device %s%s, %d classes, global batch %d, lr %.4g", run_dir, device,
                f" ({info.world_size} processes)" if info.distributed else "", num_classes, global_batch, lr)

    seed_everything(cfg.seed)
    model = create_model(cfg.arch, num_classes, pretrained=cfg.pretrained)
    if cfg.use_checkpoint:
        enable_gradient_checkpointing(model, cfg.arch)
    if cfg.sync_bn and info.distributed:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model.to(device)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    train_set = build_dataset(cfg, "train", class_names, train=True, policy=build_policy(cfg))
    val_set = build_dataset(cfg, "val", class_names, train=False)
    train_loader = build_loader(cfg, train_set, train=True, device=device, dist_info=info)
    val_loader = build_loader(cfg, val_set, train=False, device=device, dist_info=info)
    start_workers(val_loader)  # fork its workers while this process is small (see start_workers)
    logger.info("train %d images, val %d images", len(train_set), len(val_set))

    class_counts = [train_set.targets.count(c) for c in range(num_classes)]
    criterion = build_criterion(cfg, class_counts).to(device)
    val_criterion = create_criterion(cfg.criterion)  # the plain head: comparable, and stateless
    batch_hook = build_batch_hook(cfg, train_set)
    optimizer = build_optimizer(cfg, model, lr)
    steps_per_epoch = math.ceil(len(train_loader) / cfg.accumulation_steps)
    scheduler = create_scheduler(
        optimizer, schedule=cfg.scheduler, total_steps=cfg.epochs * steps_per_epoch,
        warmup_steps=round(cfg.warmup * steps_per_epoch),
        milestones=[round(e * steps_per_epoch) for e in cfg.lr_steps] if cfg.lr_steps else None,
        ratios=cfg.lr_ratios, power=cfg.poly_power, pct_start=cfg.onecycle_pct)
    ema = ModelEma(model, cfg.ema_decay) if cfg.ema else None
    dtype = amp_dtype(cfg.amp, cfg.amp_dtype, device)
    scaler = torch.amp.GradScaler(device.type) if dtype == torch.float16 else None
    preprocess = preprocessor(cfg, device)
    net = model  # what runs the batches: DDP and/or compiled around ``model``, whose weights are saved
    if info.distributed:
        net = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if cfg.compile:
        net = torch.compile(net)

    start_epoch, start_batch, partial, best_top1, history = 0, 0, None, -1.0, []
    if resume_from is not None:
        ckpt, resume_from = load_resume_checkpoint(resume_from)
        if ckpt.get("class_names") not in (None, class_names):
            raise CheckpointError(f"{resume_from} was trained on classes {ckpt['class_names'][:10]}, "
                                  f"the data has {class_names[:10]}")
        load_state_dict_checked(model, extract_state_dict(ckpt), resume_from)
        if "optimizer" not in ckpt:
            raise CheckpointError(f"{resume_from} holds weights only and cannot be resumed; "
                                  f"use --pretrained to start a new run from it")
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        if scaler is not None and ckpt.get("scaler"):
            scaler.load_state_dict(ckpt["scaler"])
        if ckpt.get("criterion"):
            criterion.load_state_dict(ckpt["criterion"])
        if ema is not None:
            ema.module.load_state_dict(ckpt["model_ema"] if ckpt.get("model_ema") else model.state_dict())
        restore_rng_state(ckpt["rng"])
        start_epoch, best_top1, history = ckpt["epoch"] + 1, ckpt["best_top1"], list(ckpt.get("history", []))
        if ckpt.get("resume_at"):  # stopped mid-epoch: continue at the next batch of that epoch
            start_epoch, start_batch = ckpt["resume_at"]["epoch"], ckpt["resume_at"]["batch"]
            partials = ckpt["resume_at"]["partial"]  # one per rank
            partial = partials[info.rank] if len(partials) == info.world_size else None
        logger.info("resumed from %s at epoch %d%s (best val top-1 so far %.2f)", resume_from, start_epoch + 1,
                    f", batch {start_batch + 1}" if start_batch else "", best_top1)

    writer = _tensorboard(run_dir, start_epoch) if main else None
    recorder = RunRecorder(config_to_dict(cfg), run_dir, resumed=resume_from is not None, enabled=main)
    if start_epoch == 0 and main:
        grid = make_augmented_grid(train_set, n=min(32, len(train_set)), seed=cfg.seed)
        Image.fromarray(grid.permute(1, 2, 0).numpy()).save(run_dir / "augmented_samples.png")
        writer.add_image("train/augmented_samples", grid, 0)
    ckpt_dir = run_dir / "checkpoints"
    progress = not cfg.no_progress
    stop = StopRequest()
    try:
        for epoch in range(start_epoch, cfg.epochs):
            train_loader.sampler.set_epoch(epoch, start=start_batch * cfg.batch_size)
            with stop:
                tr = train_one_epoch(net, train_loader, criterion, optimizer, preprocess=preprocess,
                                     scheduler=scheduler, scaler=scaler, dtype=dtype,
                                     accumulation_steps=cfg.accumulation_steps, epoch=epoch, progress=progress,
                                     batch_hook=batch_hook, ema=ema, clip_grad=cfg.clip_grad,
                                     start_batch=start_batch, partial=partial,
                                     should_stop=_stop_check(stop, device, every=10 if info.distributed else 1))
            start_batch, partial = 0, None
            if tr["interrupted"]:
                state = checkpoint_state(model, optimizer, scheduler, scaler, epoch=epoch - 1, best_top1=best_top1,
                                         class_names=class_names, cfg=cfg, history=history, criterion=criterion,
                                         ema=ema)
                state["resume_at"] = {"epoch": epoch, "batch": tr["batches_done"],
                                      "partial": gather_objects(tr["partial"])}
                if main:
                    save_checkpoint(state, ckpt_dir / "last.pth", keep_previous=True)
                logger.warning("stopped at epoch %d, batch %d; saved %s. Rerun the same command to resume there.",
                               epoch + 1, tr["batches_done"], ckpt_dir / "last.pth")
                return {"run_dir": str(run_dir), "interrupted": True, "epoch": epoch, "batch": tr["batches_done"]}
            va = evaluate(net, val_loader, val_criterion, preprocess=preprocess, dtype=dtype, progress=progress,
                          desc=f"val {epoch}")
            is_best = va["top1"] > best_top1
            best_top1 = max(best_top1, va["top1"])
            row = {"epoch": epoch, "train_loss": tr["loss"], "train_top1": tr["top1"], "lr": tr["lr"],
                   "val_loss": va["loss"], "val_top1": va["top1"], "val_top5": va["top5"],
                   "img_per_s": tr["img_per_s"], "time": tr["time"]}
            if cfg.skip_bad_images:
                row.update(skipped_train=tr["skipped"], skipped_val=va["skipped"])
                if tr["skipped"] or va["skipped"]:
                    logger.warning("epoch %d: skipped %d training and %d validation images that failed to decode",
                                   epoch + 1, tr["skipped"], va["skipped"])
            if ema is not None:
                va_ema = evaluate(ema.module, val_loader, val_criterion, preprocess=preprocess, dtype=dtype)
                row.update(val_ema_loss=va_ema["loss"], val_ema_top1=va_ema["top1"], val_ema_top5=va_ema["top5"])
            history.append(row)
            recorder.epoch(row)
            state = checkpoint_state(model, optimizer, scheduler, scaler, epoch=epoch, best_top1=best_top1,
                                     class_names=class_names, cfg=cfg, history=history, criterion=criterion,
                                     ema=ema)
            if main:
                save_checkpoint(state, ckpt_dir / "last.pth", keep_previous=True)
                if is_best:  # the same state: best.pth is linked to last.pth's file, not written again
                    link_checkpoint(ckpt_dir / "last.pth", ckpt_dir / "best.pth")
                _write_json(run_dir / "metrics.json", {"history": history})
            for key, value in row.items() if main else ():
                if key not in ("epoch", "time") and not key.startswith("skipped"):
                    name = {"lr": "train/lr", "img_per_s": "train/img_per_s"}.get(key, key.replace("_", "/", 1))
                    writer.add_scalar(name, value, epoch + 1)
            if writer is not None:
                writer.flush()
            logger.info("epoch %d/%d  train loss %.4f top-1 %.2f  val loss %.4f top-1 %.2f top-5 %.2f%s  "
                        "lr %.2e  %.0f img/s%s", epoch + 1, cfg.epochs, tr["loss"], tr["top1"], va["loss"],
                        va["top1"], va["top5"], f"  ema top-1 {row['val_ema_top1']:.2f}" if ema else "",
                        tr["lr"], tr["img_per_s"], "  *best*" if is_best else "")
            if any_rank(stop.requested, device):  # a signal during validation: the epoch is saved, stop before the next
                logger.warning("stopped after epoch %d; rerun the same command to resume.", epoch + 1)
                return {"run_dir": str(run_dir), "interrupted": True, "epoch": epoch + 1, "batch": 0}
    finally:
        if writer is not None:
            writer.close()
    barrier()  # best.pth is on disk before any rank reads it

    from .test import evaluate_and_report
    best_path = ckpt_dir / "best.pth"
    best = load_checkpoint(best_path if best_path.is_file() else ckpt_dir / "last.pth")
    if not best_path.is_file():  # e.g. a run directory assembled by hand from a last.pth
        logger.warning("%s is missing: evaluating the last weights instead", best_path)
        best_path = ckpt_dir / "last.pth"
    load_state_dict_checked(model, extract_state_dict(best), best_path)
    test_set = build_dataset(cfg, "test", class_names, train=False, fallback=True)
    test_loader = build_loader(cfg, test_set, train=False, device=device, dist_info=info)
    report = evaluate_and_report(net, test_loader, test_set, class_names, preprocess=preprocess, dtype=dtype,
                                 out_dir=run_dir / f"eval_{test_set.split}", checkpoint=best_path,
                                 progress=progress, head=cfg.criterion, write=main)
    summary = {"run_dir": str(run_dir), "best_val_top1": best_top1, "test_split": test_set.split,
               "test_top1": report["top1"], "test_top5": report["top5"]}
    if ema is not None and best.get("model_ema"):
        ema.module.load_state_dict(best["model_ema"])
        summary["test_ema_top1"] = evaluate(ema.module, test_loader, preprocess=preprocess, dtype=dtype)["top1"]
    if main:
        _write_json(run_dir / "metrics.json", {"history": history, "test": summary})
        _pictures(cfg, run_dir, history, model, test_set, preprocess, class_names, test_set.split)
    recorder.finish(summary)  # HParams; --tracker's final metrics and pictures
    logger.info("done: run directory %s; best val top-1 %.2f; %s top-1 %.2f top-5 %.2f (best.pth)%s",
                run_dir, best_top1, test_set.split, report["top1"], report["top5"],
                f"; EMA top-1 {summary['test_ema_top1']:.2f}" if "test_ema_top1" in summary else "")
    return summary
