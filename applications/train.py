"""``--train``: the run that drives the engine's loops: run directory, resume, epochs, checkpoints, final test.

The loops (``engine.train_one_epoch``, ``engine.evaluate``), the train state and the evaluation report
live in ``engine/``; this mode turns the config into their arguments.
"""
from __future__ import annotations

import argparse
import contextlib
import itertools
import logging
import math
import shutil
import signal
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
import torch.nn as nn
from PIL import Image

from config import ConfigError, config_conflicts, config_to_dict, load_saved_config, save_config
from criterions import create_criterion
from dataloader.enhancement import augmented_batch_sheet
from dataloader.loader import start_workers
from engine import amp_dtype, evaluate, evaluate_and_report, non_finite_loss, precise_bn, train_one_epoch
from engine.state import CheckpointSaver, Progress, TrainState, improves_on_best
from models import create_model, extract_state_dict, load_state_dict_checked
from models.finetune import freeze_backbone, head_parameter_names, unfreeze
from models.memory import enable_gradient_checkpointing
from optim import ModelEma, create_scheduler
from utils.checkpoint import kill_point, previous_path
from utils.distributed import DistInfo, any_rank, barrier, cleanup, gather_objects, init_distributed
from utils.atomic import save_image_atomic, write_json_atomic
from utils.misc import InterruptOnSignals, StopSignals, log_to_file, seed_everything
from utils.runlock import LOCK_NAME, RunLock
from utils.tracking import RunRecorder

from .common import (apply_weights_preprocessing, log_notes, build_dataset, build_loader, check_num_classes, data_class_names,
                     preprocessor, run_dir_for, training_spec)
from .strategies import build_batch_hook, build_criterion, build_optimizer, build_policy

logger = logging.getLogger(__name__)


# What a run directory holds before this run writes anything: the log it has just opened, its lock.
OPEN_RUN_FILES = frozenset({"log.txt", LOCK_NAME})
# The end of the line a run stopped at once (a SIGTERM outside its training steps) prints.
RESUME_HINT = "rerun the same command to resume from the last saved epoch"


def _prepare_run_dir(cfg: argparse.Namespace, run_dir: Path) -> tuple[Path | None, bool]:
    """Decide how this run starts, changing nothing on disk: returns the checkpoint to resume from (or
    None) and whether the run directory is to be cleared first (``--overwrite``).

    A rerun of the same command resumes from ``last.pth``; different flags in an existing run
    directory are refused unless ``--resume`` or ``--overwrite`` says what to do. ``--overwrite`` clears
    only a folder that holds a run of this very ``--arch`` and ``--tag`` (see ``_holds_this_run``).
    """
    last = run_dir / "checkpoints" / "last.pth"
    if cfg.resume:
        return Path(cfg.resume), False
    if cfg.overwrite:
        if not _holds_this_run(run_dir, cfg):
            raise ValueError(f"--overwrite refused: {run_dir} does not hold a training run of --arch {cfg.arch} "
                             f"--tag {cfg.tag} (no config.yaml of such a run in it), so nothing was deleted; "
                             f"pick another --tag or --output, or empty that folder yourself")
        return None, True
    saved_cfg = run_dir / "config.yaml"
    if saved_cfg.is_file() and (last.is_file() or previous_path(last).is_file()):
        conflicts = config_conflicts(load_saved_config(saved_cfg), cfg)
        if conflicts:
            diff = "; ".join(f"--{k}: {a!r} -> {b!r}" for k, (a, b) in conflicts.items())
            raise ValueError(f"run directory {run_dir} holds a run with other settings ({diff}); use another "
                             f"--tag, pass --overwrite to start afresh, or --resume to continue from a checkpoint")
        return last, False
    return None, False


def _holds_this_run(run_dir: Path, cfg: argparse.Namespace) -> bool:
    """True when ``run_dir`` is ours to clear: nothing in it but what this run just opened, or a
    ``config.yaml`` written by a training run of the same ``--arch`` and ``--tag`` (the marker a run
    directory carries from its first epoch on; a folder of anything else has no such file)."""
    if {child.name for child in run_dir.iterdir()} <= OPEN_RUN_FILES:
        return True
    if not (run_dir / "config.yaml").is_file():
        return False
    try:
        saved = load_saved_config(run_dir / "config.yaml")
    except ConfigError:  # damaged: still ours when our checkpoints sit beside it (the message offers --overwrite)
        return _has_checkpoint(run_dir)
    except OSError:
        return False
    return saved.get("train") is True and \
        saved.get("arch") == cfg.arch and saved.get("tag") == cfg.tag


def _clear_dir(folder: Path, keep: frozenset[str] = frozenset()) -> None:
    """Delete everything in ``folder`` but the names in ``keep``; links are removed, never followed."""
    for child in folder.iterdir():
        if child.name in keep:
            continue
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()


@contextlib.contextmanager
def _own_run_dir(run_dir: Path) -> Iterator[None]:
    """Create ``run_dir`` if needed and hold its lock (one run per directory) while the block runs.

    A run that fails before writing its first checkpoint leaves nothing behind: a folder it created goes
    (and so do the folders above it that it created, ``<output>/<arch>``, ...), in a folder that was
    there only the log it started.
    """
    created = [p for p in reversed(run_dir.parents) if not p.exists()]  # outermost first
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    try:
        run_dir.mkdir()
        created.append(run_dir)
    except FileExistsError:
        pass
    new_log = not (run_dir / "log.txt").exists()
    remove: list[Path] = []
    try:
        with RunLock(run_dir):
            try:
                yield
            except BaseException:
                if run_dir in created and not _has_checkpoint(run_dir):
                    _clear_dir(run_dir, keep=frozenset({LOCK_NAME}))  # the lock file goes as the lock is released
                    remove = created[::-1]  # deepest first
                elif new_log and not _has_checkpoint(run_dir):  # a folder that was there: only our log goes
                    (run_dir / "log.txt").unlink(missing_ok=True)
                raise
    finally:
        for folder in remove:
            with contextlib.suppress(OSError):  # not empty: another run has started there meanwhile
                folder.rmdir()
        if remove and not run_dir.exists():
            logger.info("removed %s: this run failed before its first checkpoint", run_dir)


def _has_checkpoint(run_dir: Path) -> bool:
    last = run_dir / "checkpoints" / "last.pth"
    return last.is_file() or previous_path(last).is_file()


class StopRequest(StopSignals):
    """Turns the first SIGINT/SIGTERM into a request to stop after the current optimizer step (a second
    one interrupts at once); the handlers are restored on exit."""

    def __init__(self) -> None:
        super().__init__()
        self.requested = False

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        logger.warning("%s received: finishing the current step, then saving last.pth (again to stop at once)",
                       signal.Signals(signum).name)

    def __call__(self) -> bool:
        return self.requested


def _pictures(cfg: argparse.Namespace, run_dir: Path, history: list[dict], model: nn.Module, test_set: Any,
              preprocess: Callable, class_names: list[str], split: str) -> None:
    """curves.png, and the confusion matrix and a few CAM overlays of the test split in TensorBoard."""
    from explain.pictures import cam_overlays_for_tensorboard
    from utils.plots import image_tensor, plot_training_curves
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


def warn_if_diverging(val_loss: float, history: list[dict], epoch: int, factor: float = 100.0) -> bool:
    """Warn when the validation loss is ``factor`` times its best so far (a run diverging without yet
    reaching inf/nan); returns whether it warned, so the caller warns once per run."""
    best = min((row["val_loss"] for row in history if math.isfinite(row["val_loss"])), default=math.inf)
    if not val_loss > factor * best:
        return False
    logger.warning("epoch %d: val loss %.3g is over %gx its best (%.3g): training is diverging; add --clip_grad "
                   "(e.g. --clip_grad 5) or lower --lr", epoch + 1, val_loss, factor, best)
    return True


def _preview_title(cfg: argparse.Namespace) -> str:
    """What augmented_samples.png shows: the first training batch and the strategies applied to it."""
    steps = [name for name, on in (("per-image policy", cfg.aug), ("random erasing", cfg.random_erasing > 0),
                                   ("teacher targets", cfg.distill), ("mixup", cfg.mixup > 0),
                                   ("cutmix", cfg.cutmix > 0), ("multi-scale", cfg.multi_scale)) if on]
    return "first training batch as the model sees it" + (f" ({', '.join(steps)})" if steps else "")


def _stop_check(stop: StopRequest, device: torch.device, every: int) -> Callable[[], bool]:
    """``should_stop`` for train_one_epoch: under DDP the ranks agree (one all-reduce) every ``every``
    steps, the same steps on every rank, so all stop together without a sync point at each step."""
    count = itertools.count(1)
    return lambda: next(count) % every == 0 and any_rank(stop.requested, device)


def _tensorboard(run_dir: Path, start_epoch: int):
    from torch.utils.tensorboard import SummaryWriter
    return SummaryWriter(log_dir=str(run_dir / "tensorboard"), purge_step=start_epoch + 1)


def _write_json(path: Path, data: Any) -> None:
    write_json_atomic(path, data)


def run(cfg: argparse.Namespace) -> dict[str, Any]:
    """Train ``cfg.arch`` on ``cfg.data``, checkpoint every epoch, then evaluate best.pth on the test split.

    Under ``torchrun`` every process trains its shard with DistributedDataParallel; rank 0 alone
    writes files (its log file included) and holds the run directory's lock.
    """
    notes = apply_weights_preprocessing(cfg)  # named --pretrained: in the cache (or an error) before anything starts
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
        with InterruptOnSignals(RESUME_HINT), _own_run_dir(run_dir), log_to_file(run_dir / "log.txt"):
            log_notes(notes)  # the weights' provenance, in the run's log too
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
    resume_from, afresh = _prepare_run_dir(cfg, run_dir) if main else (None, False)
    resume_from = gather_objects(resume_from)[0]  # rank 0 decides, every rank follows
    global_batch = cfg.batch_size * info.world_size * cfg.accumulation_steps
    lr = cfg.lr * global_batch / cfg.lr_base_batch if cfg.lr_scale == "linear" else cfg.lr
    logger.info("run directory %s, device %s%s, %d classes, global batch %d, lr %.4g", run_dir, device,
                f" ({info.world_size} processes)" if info.distributed else "", num_classes, global_batch, lr)

    seed_everything(cfg.seed)
    model = create_model(cfg.arch, num_classes, pretrained=cfg.pretrained, drop_rate=cfg.drop_rate,
                         drop_path_rate=cfg.drop_path_rate)
    if cfg.use_checkpoint:
        enable_gradient_checkpointing(model, cfg.arch)
    if cfg.sync_bn and info.distributed:  # a CPU run was refused in run()
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        logger.info("batch norms converted to SyncBatchNorm")
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
    optimizer = build_optimizer(cfg, model, lr, num_classes)  # every parameter, frozen ones too
    # --freeze_backbone: frozen from the start; the epoch loop unfreezes at --unfreeze_epoch (a resumed
    # run past it unfreezes before its first epoch), so the state always follows from the epoch.
    frozen = freeze_backbone(model, head_parameter_names(model, num_classes)) if cfg.freeze_backbone else None
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
    def wrap() -> nn.Module:
        """What runs the batches: DDP and/or compiled around ``model``, whose weights are saved (built again
        when the backbone unfreezes: DDP registers the parameters that train when it is made)."""
        out = model
        if info.distributed:
            out = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda"
                                                            else None)
        return torch.compile(out) if cfg.compile else out
    net = wrap()

    train_state = TrainState(model, optimizer, scheduler, scaler, criterion, ema)
    spec, config = training_spec(cfg, class_names), config_to_dict(cfg)
    saver = CheckpointSaver(run_dir / "checkpoints")
    at = Progress()
    if resume_from is not None:
        ckpt, resume_from = saver.load_resume(resume_from)
        at = train_state.restore(ckpt, resume_from, class_names=class_names, rank=info.rank,
                                 world_size=info.world_size)
        logger.info("resumed from %s at epoch %d%s (%s)", resume_from, at.start_epoch + 1,
                    f", batch {at.start_batch + 1}" if at.start_batch else "",
                    f"best val top-1 so far {at.best_top1:.2f}" if at.history else "no epoch validated yet")
    start_epoch, start_batch, partial = at.start_epoch, at.start_batch, at.partial
    best_top1, best_epoch, history = at.best_top1, at.best_epoch, at.history

    if main:  # the new run is built: only now is anything in the run directory changed
        if afresh:
            logger.info("--overwrite: starting afresh in %s", run_dir)
            _clear_dir(run_dir, keep=OPEN_RUN_FILES)
        saver.tidy(resume_from, best_epoch)
        save_config(cfg, run_dir / "config.yaml")
    writer = _tensorboard(run_dir, start_epoch) if main else None
    recorder = RunRecorder(config_to_dict(cfg), run_dir, resumed=resume_from is not None, enabled=main)
    if start_epoch == 0 and main:
        sheet = augmented_batch_sheet(train_set, class_names, n=min(32, len(train_set)), seed=cfg.seed,
                                      batch_hook=batch_hook, title=_preview_title(cfg))
        save_image_atomic(Image.fromarray(sheet), run_dir / "augmented_samples.png")
        writer.add_image("train/augmented_samples", torch.tensor(sheet).permute(2, 0, 1), 0)
    progress = not cfg.no_progress
    stop = StopRequest()
    diverging = False
    try:
        for epoch in range(start_epoch, cfg.epochs):
            if frozen is not None and cfg.unfreeze_epoch is not None and epoch >= cfg.unfreeze_epoch:
                unfreeze(model, frozen)
                frozen, net = None, wrap()
                logger.info("epoch %d: the backbone trains from now on (--unfreeze_epoch %d)", epoch + 1,
                            cfg.unfreeze_epoch)
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
                state = train_state.capture(epoch=epoch - 1, best_top1=best_top1, best_epoch=best_epoch, spec=spec,
                                            config=config, history=history)
                state["resume_at"] = {"epoch": epoch, "batch": tr["batches_done"],
                                      "partial": gather_objects(tr["partial"])}
                if main:
                    saver.save(state)
                logger.warning("stopped at epoch %d, batch %d; saved %s. Rerun the same command to resume there.",
                               epoch + 1, tr["batches_done"], saver.last)
                return {"run_dir": str(run_dir), "interrupted": True, "epoch": epoch, "batch": tr["batches_done"]}
            if cfg.precise_bn:
                precise_bn(model, train_loader, epoch, cfg.precise_bn, preprocess=preprocess, dtype=dtype)
            va = evaluate(net, val_loader, val_criterion, preprocess=preprocess, dtype=dtype, progress=progress,
                          desc=f"val {epoch}")
            # Weights whose validation loss is inf/nan (BN statistics blown up by a huge LR, while the
            # training loss, on batch statistics, stayed finite) are neither saved nor ever "best": last.pth
            # and best.pth keep the last good epoch, so nothing is lost.
            if not math.isfinite(va["loss"]):
                raise non_finite_loss(f"the validation loss became {va['loss']} at epoch {epoch + 1} (that epoch is "
                                      f"not saved; val top-1 {va['top1']:.2f})")
            is_best = improves_on_best(va["top1"], va["loss"], best_top1=best_top1, best_epoch=best_epoch,
                                       history=history)
            if is_best:
                best_top1, best_epoch = va["top1"], epoch
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
                if not math.isfinite(va_ema["loss"]):
                    raise non_finite_loss(f"the EMA weights' validation loss became {va_ema['loss']} at epoch "
                                          f"{epoch + 1} (that epoch is not saved)")
                row.update(val_ema_loss=va_ema["loss"], val_ema_top1=va_ema["top1"], val_ema_top5=va_ema["top5"])
            diverging = diverging or warn_if_diverging(va["loss"], history, epoch)
            history.append(row)
            recorder.epoch(row)
            state = train_state.capture(epoch=epoch, best_top1=best_top1, best_epoch=best_epoch, spec=spec,
                                        config=config, history=history)
            if main:
                saver.save(state, is_best)  # best: best.pth is linked to last.pth's file, not written again
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
    if main:
        saver.restore_best_link(best_epoch)
    barrier()  # best.pth is on disk before any rank reads it

    best, best_path = saver.load_best()
    load_state_dict_checked(model, extract_state_dict(best), best_path)
    test_set = build_dataset(cfg, "test", class_names, train=False, fallback=True)
    test_loader = build_loader(cfg, test_set, train=False, device=device, dist_info=info)
    kill_point("final_test")
    logger.info("final test: %s on the %s split (%d images)", best_path.name, test_set.split, len(test_set))
    report = evaluate_and_report(net, test_loader, test_set, class_names, preprocess=preprocess, dtype=dtype,
                                 out_dir=run_dir / f"eval_{test_set.split}", checkpoint=best_path,
                                 progress=progress, head=spec.head, write=main)
    summary = {"run_dir": str(run_dir), "best_val_top1": best_top1, "test_split": test_set.split,
               "test_top1": report["top1"], "test_top5": report["top5"]}
    if ema is not None and best.get("model_ema"):
        ema.module.load_state_dict(best["model_ema"])
        summary["test_ema_top1"] = evaluate(ema.module, test_loader, preprocess=preprocess, dtype=dtype)["top1"]
    if main:
        _pictures(cfg, run_dir, history, model, test_set, preprocess, class_names, test_set.split)
    recorder.finish(summary)  # HParams; --tracker's final metrics and pictures
    if main:  # last: the test result in metrics.json is what marks the run finished (utils.runs.read_run)
        _write_json(run_dir / "metrics.json", {"history": history, "test": summary})
    logger.info("done: run directory %s; best val top-1 %.2f; %s top-1 %.2f top-5 %.2f (%s)%s",
                run_dir, best_top1, test_set.split, report["top1"], report["top5"], best_path.name,
                f"; EMA top-1 {summary['test_ema_top1']:.2f}" if "test_ema_top1" in summary else "")
    return summary
