"""``--train``: the run that drives the engine's loops: run directory, resume, epochs, checkpoints, final test.

The loops (``engine.train_one_epoch``, ``engine.evaluate``), the train state, the epoch-end bookkeeping and
the evaluation report live in ``engine/``; the parts are built by ``applications.setup.training``; this mode
puts them in order, as pycls's ``train_model`` does.
"""
from __future__ import annotations

import argparse
import contextlib
import logging
import math
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.nn as nn
from PIL import Image

from config import config_to_dict, save_config
from dataloader.enhancement import augmented_batch_sheet
from dataloader.splits import write_split
from engine import evaluate, evaluate_and_report, non_finite_loss, precise_bn
from engine.averaging import averaged_checkpoint
from engine.early_stop import EarlyStopping
from engine.epoch_end import EpochEnd, headline
from engine.loops import tuned_summary
from engine.state import CheckpointSaver, Progress, TrainState
from engine.step_log import StepLog
from engine.stop import StopRequest, stop_check
from experiments.tracking import RunRecorder
from models import extract_state_dict, load_state_dict_checked
from models.spec import ModelSpec
from utils.atomic import save_image_atomic, write_json_atomic
from utils.checkpoint import kill_point, save_checkpoint
from utils.distributed import DistInfo, any_rank, barrier, cleanup, gather_objects, init_distributed
from utils.eval_metric import eval_metric_of
from utils.misc import HoldSignals, InterruptOnSignals, log_to_file
from utils.rundir import OPEN_RUN_FILES, clear_dir, own_run_dir

from .setup.common import (
    apply_weights_preprocessing,
    averaged_model,
    build_dataset,
    build_loader,
    check_num_classes,
    check_use_test_size,
    data_class_names,
    evaluation_spec,
    input_geometry,
    log_notes,
    run_dir_for,
    size_text,
    training_spec,
)
from .setup.run_start import check_run_split, plan_run_start
from .setup.training import TrainingParts, build_training_parts

logger = logging.getLogger(__name__)


# The end of the line a run stopped at once (a SIGTERM outside its training steps) prints.
RESUME_HINT = "rerun the same command to resume from the last saved epoch"


def _pictures(cfg: argparse.Namespace, run_dir: Path, history: list[dict], model: nn.Module, test_set: Any,
              preprocess: Callable, class_names: list[str], split: str,
              thresholds: Sequence[float] | None = None) -> None:
    """curves.png, and the confusion matrix (multi-label: the per-class AP) and a few CAM overlays of the test
    split in TensorBoard."""
    from explain.pictures import cam_overlays_for_tensorboard
    from utils.plots import image_tensor, plot_training_curves
    if history:
        plot_training_curves(history, run_dir / "curves.png")
    overlays = None
    try:
        overlays = cam_overlays_for_tensorboard(model, test_set, preprocess, class_names, arch=cfg.arch,
                                                target_layer=cfg.target_layer, head=cfg.criterion, n=4,
                                                thresholds=thresholds)
    except ValueError as e:  # e.g. a layer without N x C x H x W maps: the run itself is fine
        logger.warning("no CAM overlays in TensorBoard: %s", e)
    # the report's summary picture: the confusion matrix, or a multi-label model's per-class AP
    pictures = [path for name in ("confusion_matrix.png", "per_class.png")
                if (path := run_dir / f"eval_{split}" / name).is_file()]
    with HoldSignals():  # a SIGTERM mid-write would leave the writer's close hanging (see HoldSignals)
        writer = _tensorboard(run_dir, cfg.epochs)
        try:
            for path in pictures:
                writer.add_image(f"{split}/{path.stem}", image_tensor(path), cfg.epochs)
            if overlays is not None:
                writer.add_images(f"{split}/cam_overlays", overlays, cfg.epochs)
        finally:
            writer.close()


def _preview_title(cfg: argparse.Namespace) -> str:
    """What augmented_samples.png shows: the first training batch and the strategies applied to it."""
    steps = [name for name, on in (("per-image policy", cfg.aug), ("random erasing", cfg.random_erasing > 0),
                                   ("teacher targets", cfg.distill), ("mixup", cfg.mixup > 0),
                                   ("cutmix", cfg.cutmix > 0), ("multi-scale", cfg.multi_scale)) if on]
    return "first training batch as the model sees it" + (f" ({', '.join(steps)})" if steps else "")


def _tensorboard(run_dir: Path, start_epoch: int):
    from torch.utils.tensorboard import SummaryWriter
    return SummaryWriter(log_dir=str(run_dir / "tensorboard"), purge_step=start_epoch + 1)


def run(cfg: argparse.Namespace) -> dict[str, Any]:
    """Train ``cfg.arch`` on ``cfg.data``, checkpoint every epoch, then evaluate best.pth on the test split.

    Under ``torchrun`` every process trains its shard with DistributedDataParallel; rank 0 alone
    writes files (its log file included) and holds the run directory's lock.
    """
    notes = apply_weights_preprocessing(cfg)  # named --pretrained: in the cache (or an error) before anything starts
    check_use_test_size(cfg)  # the final test's size, refused now rather than after training
    info = init_distributed(cfg.device)
    try:
        run_dir = run_dir_for(cfg.output, cfg.arch, cfg.tag)  # checks --arch and --tag before any disk access
        if cfg.sync_bn and info.device.type != "cuda":
            raise ValueError(f"--sync_bn needs CUDA devices (PyTorch's SyncBatchNorm runs on GPU modules only) and "
                             f"this run is on {info.device}; drop --sync_bn: each process then normalises with "
                             f"its own batch's statistics")
        if not info.is_main:
            logging.getLogger().setLevel(logging.WARNING)
            return _train(cfg, run_dir, info)
        # SIGTERM outside the training steps' stop request (start-up, validation, the final test) stops the run
        # as Ctrl-C does: exit 130 and one line
        with InterruptOnSignals(RESUME_HINT), own_run_dir(run_dir), log_to_file(run_dir / "log.txt"):
            log_notes(notes)  # the weights' provenance, in the run's log too
            try:
                return _train(cfg, run_dir, info)
            except Exception:  # keep the traceback in the run's own log too
                logger.debug("training failed", exc_info=True)
                raise
    finally:
        cleanup()


def _train(cfg: argparse.Namespace, run_dir: Path, info: DistInfo) -> dict[str, Any]:
    """The run, one step per line: plan the start, build the parts, restore, open the run directory, train
    the epochs, test the best epoch. Every rank runs it; rank 0 (``main``) alone writes files."""
    main = info.is_main
    # Decide where the run starts (rank 0 reads the run directory, every rank follows) and the LR
    class_names = data_class_names(cfg)
    resume_from, afresh, lr = _plan_start(cfg, run_dir, info, class_names)
    # Build the model, data, loss, batch hook, optimizer, schedule, EMA and precision
    parts = build_training_parts(cfg, class_names, info, lr=lr)
    train_state = TrainState(parts.model, parts.optimizer, parts.scheduler, parts.scaler, parts.criterion, parts.ema,
                             parts.swa, parts.projection)
    spec = training_spec(cfg, class_names)
    capture = _capture(train_state, spec, config_to_dict(cfg))
    # Restore the train state of the checkpoint to resume from; the saver takes over its best epoch
    metric = eval_metric_of(vars(cfg))
    saver = CheckpointSaver(run_dir / "checkpoints", metric, cfg.checkpoint_hist, cfg.keep_last)
    at, resume_from = _restore(train_state, saver, resume_from, class_names, info)
    # A resumed run's split of train (--val_fraction/--test_fraction) must be the one it saved
    split_saved = check_run_split(run_dir, parts.train_set.split_table, resuming=resume_from is not None)
    # The new run is built: only now is anything in the run directory changed
    if main:
        _open_run_dir(cfg, run_dir, saver, resume_from, afresh, None if split_saved else parts.train_set.split_table)
    writer = _tensorboard(run_dir, at.start_epoch) if main else None
    recorder = RunRecorder(config_to_dict(cfg), run_dir, resumed=resume_from is not None, enabled=main)
    early_stop = EarlyStopping(metric, cfg.patience, cfg.min_delta)
    early_stop.restore(at.early_stop, at.history)
    end = EpochEnd(run_dir, cfg.epochs, saver, writer, recorder, capture, at.history, write=main,
                   skip_bad_images=cfg.skip_bad_images, early_stop=early_stop)
    end.thresholds = at.thresholds  # a resumed run saves mid-epoch with the thresholds it had
    # A picture of the first training batch as the model sees it (inside the try: a bad image in that batch
    # still closes the writer, whose thread would otherwise write into the removed run directory)
    try:
        if at.start_epoch == 0 and main:
            _preview(cfg, run_dir, parts, class_names, writer)
        # Train, validate and save every epoch, under the stop request
        stopped = _train_epochs(cfg, parts, end, at, info)
    finally:
        if writer is not None:
            with HoldSignals():
                writer.close()
    if stopped is not None:
        return stopped
    # Test best.pth on the test split; the summary, the pictures and the finished metrics.json
    return _final_test(cfg, parts, end, recorder, info, class_names, spec)


def _capture(train_state: TrainState, spec: ModelSpec, config: dict[str, Any]) -> Callable[..., dict[str, Any]]:
    """The checkpoint of the run's state now, its spec carrying the epoch's tuned decision ``thresholds``
    (multi-label with ``--tune_thresholds``; none: 0.5 per class)."""
    def capture(*, thresholds: Sequence[float] = (), **progress: Any) -> dict[str, Any]:
        return train_state.capture(spec=replace(spec, thresholds=tuple(thresholds)), config=config, **progress)
    return capture


def best_thresholds(ckpt: dict[str, Any], spec: ModelSpec) -> list[float]:
    """The decision thresholds a checkpoint was saved with (tuned on its epoch's val split), else 0.5 each."""
    saved = ckpt.get("model_spec")
    return ModelSpec.from_dict(saved).decision_thresholds if isinstance(saved, dict) else spec.decision_thresholds


def _plan_start(cfg: argparse.Namespace, run_dir: Path, info: DistInfo,
                class_names: list[str]) -> tuple[Path | None, bool, float]:
    """The checkpoint to resume from (or None), whether to clear the run directory first, and the LR
    (``--lr_scale linear``: scaled by the global batch)."""
    num_classes = check_num_classes(cfg.num_classes, class_names, cfg.data)
    resume_from, afresh = plan_run_start(cfg, run_dir) if info.is_main else (None, False)
    resume_from = gather_objects(resume_from)[0]  # rank 0 decides, every rank follows
    global_batch = cfg.batch_size * info.world_size * cfg.accumulation_steps
    lr = cfg.lr * global_batch / cfg.lr_base_batch if cfg.lr_scale == "linear" else cfg.lr
    logger.info("run directory %s, device %s%s, %d classes, global batch %d, lr %.4g", run_dir, info.device,
                f" ({info.world_size} processes)" if info.distributed else "", num_classes, global_batch, lr)
    return resume_from, afresh, lr


def _restore(train_state: TrainState, saver: CheckpointSaver, resume_from: Path | None, class_names: list[str],
             info: DistInfo) -> tuple[Progress, Path | None]:
    """Where the run continues (a fresh :class:`Progress` without a checkpoint) and the checkpoint actually
    read (``last.pth.prev`` when ``last.pth`` is damaged); the saver adopts the recorded best epoch."""
    at = Progress()
    if resume_from is not None:
        ckpt, resume_from = saver.load_resume(resume_from)
        at = train_state.restore(ckpt, resume_from, class_names=class_names, rank=info.rank,
                                 world_size=info.world_size)
        logger.info("resumed from %s at epoch %d%s (%s)", resume_from, at.start_epoch + 1,
                    f", batch {at.start_batch + 1}" if at.start_batch else "",
                    f"best val {saver.metric.label} so far {at.best_top1:.2f}" if at.history and saver.metric
                    else f"best val so far {at.best_top1:.2f}" if at.history else "no epoch validated yet")
    saver.adopt(at)
    return at, resume_from


def _open_run_dir(cfg: argparse.Namespace, run_dir: Path, saver: CheckpointSaver, resume_from: Path | None,
                  afresh: bool, split: dict[str, Any] | None) -> None:
    """Rank 0, once the run is built: clear the folder (``--overwrite``), tidy the checkpoints, save the config
    and the split carved out of train (``split``, when not saved already)."""
    if afresh:
        logger.info("--overwrite: starting afresh in %s", run_dir)
        clear_dir(run_dir, keep=OPEN_RUN_FILES)
    saver.tidy(resume_from)
    save_config(cfg, run_dir / "config.yaml")
    if split is not None:
        write_split(run_dir, split)


def _preview(cfg: argparse.Namespace, run_dir: Path, parts: TrainingParts, class_names: list[str], writer) -> None:
    """augmented_samples.png (and in TensorBoard): the first training batch with the batch hook applied."""
    sheet = augmented_batch_sheet(parts.train_set, class_names, n=min(32, len(parts.train_set)), seed=cfg.seed,
                                  batch_hook=parts.batch_hook, title=_preview_title(cfg))
    save_image_atomic(Image.fromarray(sheet), run_dir / "augmented_samples.png")
    with HoldSignals():  # start-up stops at once, but not inside TensorBoard's writer (see HoldSignals)
        writer.add_image("train/augmented_samples", torch.tensor(sheet).permute(2, 0, 1), 0)


def _train_epochs(cfg: argparse.Namespace, parts: TrainingParts, end: EpochEnd, at: Progress,
                  info: DistInfo) -> dict[str, Any] | None:
    """The epochs from ``at`` on; returns the result of a run stopped by a signal, or None when all ran.

    The whole epoch (its steps, validation, saving, TensorBoard, the log line) runs under the stop
    request: a SIGINT/SIGTERM only sets a flag, read after each optimizer step and at the epoch's end,
    so it never lands inside a rename, a lock or TensorBoard's queue (it did: a lost last.pth, a hang).
    """
    progress = not cfg.no_progress
    start_batch, partial = at.start_batch, at.partial
    if cfg.save_every_steps:
        logger.info("last.pth is also saved every %d optimizer steps inside the epochs (--save_every_steps): a "
                    "kill loses at most %d steps", cfg.save_every_steps, cfg.save_every_steps)
    if end.early_stop.stopped_epoch is not None:  # resumed after the early stop: on to the final test
        logger.info("early-stopped at epoch %d (--patience %d): no more epochs", end.early_stop.stopped_epoch + 1,
                    cfg.patience)
        return None
    stop, step_log = StopRequest(), _step_log(cfg, parts, end.run_dir, at, info)
    with stop, contextlib.closing(step_log) if step_log is not None else contextlib.nullcontext():
        for epoch in range(at.start_epoch, cfg.epochs):
            if parts.frozen is not None and cfg.unfreeze_epoch is not None and epoch >= cfg.unfreeze_epoch:
                parts.unfreeze()
                logger.info("epoch %d: the backbone trains from now on (--unfreeze_epoch %d)", epoch + 1,
                            cfg.unfreeze_epoch)
            if epoch == cfg.mixup_off_epoch:  # the hook reads the epoch: off after a resume past it too
                logger.info("epoch %d: mixup/cutmix off from now on (--mixup_off_epoch %d)", epoch + 1, epoch)
            parts.train_loader.sampler.set_epoch(epoch, start=start_batch * cfg.batch_size)
            tr = parts.train_epoch(epoch, progress=progress, start_batch=start_batch, partial=partial,
                                   should_stop=stop_check(stop, info.device, every=10 if info.distributed else 1),
                                   save_point=_step_checkpoints(cfg.save_every_steps, parts, end, epoch),
                                   step_log=step_log)
            start_batch, partial = 0, None
            if tr["interrupted"]:
                return _save_interrupted(end, epoch, tr)
            if parts.swa is not None and epoch >= cfg.epochs - cfg.swa_epochs:  # one of the last --swa_epochs
                parts.swa.update_parameters(parts.model)
            va, va_ema = _validate(cfg, parts, epoch, tr, progress)
            end(epoch, tr, va, va_ema)
            if any_rank(stop.requested, info.device):  # a signal during validation: the epoch is saved, stop now
                logger.warning("stopped after epoch %d; rerun the same command to resume.", epoch + 1)
                return {"run_dir": str(end.run_dir), "interrupted": True, "epoch": epoch + 1, "batch": 0}
            if end.early_stop.stopped_epoch is not None:  # every rank: the same all-reduced metric
                logger.info("early stop after epoch %d: val %s has not improved by more than %g for %d epochs "
                            "(--patience)", epoch + 1, end.saver.metric.label, cfg.min_delta, cfg.patience)
                break
    return None


def _step_log(cfg: argparse.Namespace, parts: TrainingParts, run_dir: Path, at: Progress,
              info: DistInfo) -> StepLog | None:
    """``--log_interval``'s per-step lines (rank 0 only; None when off), their TensorBoard scalars in
    ``tensorboard/steps`` (beside the epochs' folder, whose purge on a resume counts epochs, not steps)."""
    if not cfg.log_interval or not info.is_main:
        return None
    from torch.utils.tensorboard import SummaryWriter
    start = at.start_epoch * parts.steps_per_epoch + math.ceil(at.start_batch / parts.accumulation_steps)
    writer = SummaryWriter(log_dir=str(run_dir / "tensorboard" / "steps"), purge_step=start + 1)
    return StepLog(cfg.log_interval, parts.steps_per_epoch, cfg.epochs, parts.accumulation_steps, writer,
                   info.world_size)


def _save_interrupted(end: EpochEnd, epoch: int, tr: dict[str, Any]) -> dict[str, Any]:
    """Save last.pth in the middle of epoch ``epoch`` (every rank's running sums, to continue there)."""
    end.save_mid_epoch(epoch, tr["batches_done"], tr["partial"])
    logger.warning("stopped at epoch %d, batch %d; saved %s. Rerun the same command to resume there.",
                   epoch + 1, tr["batches_done"], end.saver.last)
    return {"run_dir": str(end.run_dir), "interrupted": True, "epoch": epoch, "batch": tr["batches_done"]}


def _step_checkpoints(every: int, parts: TrainingParts, end: EpochEnd,
                      epoch: int) -> Callable[[int, dict[str, float]], None] | None:
    """``--save_every_steps N`` (None when 0): epoch ``epoch``'s save point, which writes the mid-epoch state as
    last.pth after every N-th optimizer step, counted from the run's first step (so a resumed run saves at
    the steps an uninterrupted one does, and the same step on every rank)."""
    if not every:
        return None

    def save_point(batches_done: int, partial: dict[str, float]) -> None:
        step = epoch * parts.steps_per_epoch + math.ceil(batches_done / parts.accumulation_steps)
        if step % every == 0:
            end.save_mid_epoch(epoch, batches_done, partial)
            logger.debug("step %d: saved %s at epoch %d, batch %d (--save_every_steps %d)", step, end.saver.last,
                         epoch + 1, batches_done, every)
    return save_point


def _validate(cfg: argparse.Namespace, parts: TrainingParts, epoch: int, tr: dict[str, Any],
              progress: bool) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """Validation of the weights (after ``--precise_bn``) and of their EMA (None without one).

    Weights whose validation loss is inf/nan (BN statistics blown up by a huge LR, while the training loss,
    on batch statistics, stayed finite) are neither saved nor ever "best": last.pth and best.pth keep the
    last good epoch, so nothing is lost.
    """
    if cfg.precise_bn:
        precise_bn(parts.model, parts.train_loader, epoch, cfg.precise_bn, preprocess=parts.preprocess,
                   dtype=parts.dtype)
    va = evaluate(parts.net(), parts.val_loader, parts.val_criterion, preprocess=parts.preprocess, dtype=parts.dtype,
                  progress=progress, desc=f"val {epoch}", multi_label=parts.multi_label)
    if cfg.tune_thresholds:
        va.update(tuned_summary(va))
    if not math.isfinite(va["loss"]):
        raise non_finite_loss(f"the validation loss became {va['loss']} at epoch {epoch + 1} (that epoch is "
                              f"not saved; val top-1 {va['top1']:.2f})")
    if cfg.skip_bad_images and (tr["skipped"] or va["skipped"]):
        logger.warning("epoch %d: skipped %d training and %d validation images that failed to decode",
                       epoch + 1, tr["skipped"], va["skipped"])
    if parts.ema is None:
        return va, None
    va_ema = evaluate(parts.ema.module, parts.val_loader, parts.val_criterion, preprocess=parts.preprocess,
                      dtype=parts.dtype, multi_label=parts.multi_label)
    if not math.isfinite(va_ema["loss"]):
        raise non_finite_loss(f"the EMA weights' validation loss became {va_ema['loss']} at epoch "
                              f"{epoch + 1} (that epoch is not saved)")
    return va, va_ema


def _summary(end: EpochEnd, run_dir: Path, split: str, report: dict[str, Any], multi_label: bool) -> dict[str, Any]:
    """metrics.json's ``test`` summary: the best epoch's validation numbers (``best_val``: its eval metric, what
    chose best.pth), the test split's, and ``early_stopped_at`` (the 1-based epoch, or None)."""
    saver = end.saver
    best_row = next((row for row in end.history if row["epoch"] == saver.best_epoch), {})
    stopped = end.early_stop.stopped_epoch
    summary = {"run_dir": str(run_dir), "best_val_top1": best_row.get("val_top1", saver.best_top1),
               "eval_metric": saver.metric.name, "best_val": saver.best_top1,
               "best_epoch": None if saver.best_epoch is None else saver.best_epoch + 1,
               "early_stopped_at": None if stopped is None else stopped + 1, "test_split": split,
               "test_top1": report["top1"], "test_top5": report["top5"]}
    if multi_label:  # top-1 is p@1
        summary.update(best_val_map=best_row.get("val_map"), test_map=report["map"], test_of1=report["OF1"],
                       test_cf1=report["CF1"])
    else:
        summary.update(test_macro_f1=100.0 * report["macro"]["f1"],
                       test_balanced_acc=100.0 * report["balanced_accuracy"])
    return summary


def _test_swa(cfg: argparse.Namespace, parts: TrainingParts, best: dict[str, Any],
              test_loader: torch.utils.data.DataLoader, path: Path, main: bool) -> dict[str, Any]:
    """``--swa_epochs``: the averaged weights get batch-norm statistics over one pass of the training data
    (as ``swa_utils.update_bn``, through the ``--precise_bn`` code), are saved as ``path`` (a weights-only
    checkpoint with best.pth's spec) and tested: ``test_swa_top1``, ``test_swa_loss`` (and mAP). A run that
    stopped early, before its last ``--swa_epochs``, averaged nothing: a warning, and ``swa_checkpoint`` null."""
    if not parts.swa.n_averaged.item():
        logger.warning("--swa_epochs %d: no epoch was averaged (the run stopped early, before its last %d epochs), "
                       "so there is no swa.pth", cfg.swa_epochs, cfg.swa_epochs)
        return {"swa_checkpoint": None}
    model = parts.swa.module
    precise_bn(model, parts.train_loader, cfg.epochs, len(parts.train_loader), preprocess=parts.preprocess,
               dtype=parts.dtype)
    if main:
        state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
        save_checkpoint({**averaged_checkpoint(state, best), "swa_epochs": cfg.swa_epochs}, path)
    result = evaluate(model, test_loader, parts.val_criterion, preprocess=parts.preprocess, dtype=parts.dtype,
                      multi_label=parts.multi_label)
    logger.info("SWA (average of %d epochs, %s): test top-1 %.2f%s", parts.swa.n_averaged.item(), path.name,
                result["top1"], f" loss {result['loss']:.4f}" if "loss" in result else "")
    summary = {"test_swa_top1": result["top1"], "test_swa_loss": result.get("loss"), "swa_checkpoint": str(path)}
    if parts.multi_label:
        summary["test_swa_map"] = headline(result)
    return summary


def _plain_test(cfg: argparse.Namespace, parts: TrainingParts, loader: torch.utils.data.DataLoader,
                spec: ModelSpec, report: dict[str, Any], thresholds: Sequence[float]) -> dict[str, float]:
    """``--tta``: best.pth without it on the same test images, logged beside the TTA number
    (``test_top1_plain``, and ``test_map_plain`` for a multi-label run)."""
    plain = evaluate(parts.net(), loader, preprocess=parts.preprocess, dtype=parts.dtype,
                     multi_label=spec.multi_label, thresholds=thresholds if spec.multi_label else 0.5)
    key, name = ("map", "mAP") if spec.multi_label else ("top1", "top-1")
    logger.info("final test with --tta %s: %s %.2f (plain %.2f)", " ".join(cfg.tta), name, report[key], plain[key])
    return {"test_top1_plain": plain["top1"], **({"test_map_plain": plain["map"]} if spec.multi_label else {})}


def _final_test(cfg: argparse.Namespace, parts: TrainingParts, end: EpochEnd, recorder: RunRecorder,
                info: DistInfo, class_names: list[str], spec: ModelSpec) -> dict[str, Any]:
    """Evaluate best.pth (and its EMA weights) on the test split; write the report, the pictures and the
    test result into metrics.json, which marks the run finished."""
    run_dir, saver, main = end.run_dir, end.saver, info.is_main
    if main:
        saver.restore_best_link()
    barrier()  # best.pth is on disk before any rank reads it
    best, best_path = saver.load_best()
    load_state_dict_checked(parts.model, extract_state_dict(best), best_path)
    test_size = getattr(cfg, "use_test_size", False)
    test_spec = evaluation_spec(spec, test_size, best_path)  # --use_test_size: the weights' test size
    test_set = build_dataset(cfg, "test", class_names, train=False, fallback=True, spec=test_spec)
    test_loader = build_loader(cfg, test_set, train=False, device=info.device, dist_info=info)
    kill_point("final_test")
    logger.info("final test: %s on the %s split (%d images) at %s", best_path.name, test_set.split, len(test_set),
                size_text(test_spec.image_size))
    tested = averaged_model(cfg, parts.net(), spec)  # --tta: the views' probabilities averaged
    report = evaluate_and_report(tested, test_loader, test_set, class_names, preprocess=parts.preprocess,
                                 dtype=parts.dtype, out_dir=run_dir / f"eval_{test_set.split}", checkpoint=best_path,
                                 progress=not cfg.no_progress, head=spec.head, write=main,
                                 multi_label=spec.multi_label, thresholds=best_thresholds(best, spec),
                                 input_geometry=input_geometry(test_spec, test_size))
    summary = _summary(end, run_dir, test_set.split, report, spec.multi_label)
    if tested is not parts.net():
        summary.update(_plain_test(cfg, parts, test_loader, spec, report, best_thresholds(best, spec)))
    if parts.ema is not None and best.get("model_ema"):
        parts.ema.module.load_state_dict(best["model_ema"])
        ema = evaluate(parts.ema.module, test_loader, preprocess=parts.preprocess, dtype=parts.dtype,
                       multi_label=spec.multi_label)
        summary["test_ema_top1"] = ema["top1"]
        if spec.multi_label:
            summary["test_ema_map"] = headline(ema)
    if parts.swa is not None:
        summary.update(_test_swa(cfg, parts, best, test_loader, saver.folder / "swa.pth", main))
    if main:
        _pictures(cfg, run_dir, end.history, parts.model, test_set, parts.preprocess, class_names, test_set.split,
                  best_thresholds(best, spec) if spec.multi_label else None)
    recorder.finish(summary)  # HParams; --tracker's final metrics and pictures
    if main:  # last: the test result in metrics.json is what marks the run finished (experiments.runs.read_run)
        write_json_atomic(run_dir / "metrics.json", {"history": end.history, "test": summary})
    if spec.multi_label:
        logger.info("done: run directory %s; best val mAP %.2f; %s mAP %.2f OF1 %.2f CF1 %.2f (%s)%s", run_dir,
                    summary["best_val_map"], test_set.split, report["map"], report["OF1"], report["CF1"],
                    best_path.name,
                    f"; EMA mAP {summary['test_ema_map']:.2f}" if "test_ema_map" in summary else "")
        return summary
    logger.info("done: run directory %s; best val top-1 %.2f; %s top-1 %.2f top-5 %.2f (%s)%s",
                run_dir, summary["best_val_top1"], test_set.split, report["top1"], report["top5"], best_path.name,
                f"; EMA top-1 {summary['test_ema_top1']:.2f}" if "test_ema_top1" in summary else "")
    return summary
