"""The parts of a training run, built once from the config: what ``--train``, ``--lr_finder`` and the tests
train with (one builder, so the three cannot drift apart)."""
from __future__ import annotations

import argparse
import logging
import math
from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
import torch.nn as nn
from torch.optim.swa_utils import AveragedModel

from dataloader.labels import class_counts as label_counts
from dataloader.loader import start_workers
from engine import amp_dtype, train_one_epoch
from engine.distill import OnlineTeacher
from engine.step_log import StepLog
from models import create_model
from models.finetune import freeze_backbone, head_parameter_names, unfreeze
from models.memory import enable_gradient_checkpointing
from optim import ModelEma, create_scheduler
from utils.distributed import DistInfo
from utils.misc import seed_everything

from .common import build_dataset, build_loader, preprocessor
from .strategies import build_batch_hook, build_criterion, build_optimizer, build_policy, needs_class_counts
from .teacher import build_online_teacher

logger = logging.getLogger(__name__)


@dataclass
class TrainingParts:
    """A run's model, data, loss, optimizer, schedule and precision, and the options of its training steps.

    ``model`` is the module whose weights are saved; :meth:`net` is what runs the batches (DDP and/or
    compiled around it). ``frozen``: the hooks of ``--freeze_backbone`` while the backbone is frozen (None: all train).
    """
    model: nn.Module
    info: DistInfo
    train_set: Any
    train_loader: torch.utils.data.DataLoader
    val_set: Any
    val_loader: torch.utils.data.DataLoader | None
    criterion: nn.Module
    val_criterion: nn.Module | None
    batch_hook: Callable | None
    optimizer: torch.optim.Optimizer
    scheduler: Any
    ema: ModelEma | None
    swa: AveragedModel | None  # --swa_epochs: the average of the last epochs' weights (torch.optim.swa_utils)
    dtype: torch.dtype | None
    scaler: torch.amp.GradScaler | None
    preprocess: Callable[[torch.Tensor], torch.Tensor]
    frozen: Any
    steps_per_epoch: int
    accumulation_steps: int
    clip_grad: float | None
    compile: bool
    multi_label: bool = False  # label sets: multi-hot targets, mAP (dataloader/labels.py)
    distiller: OnlineTeacher | None = None  # --teacher: run on every batch (engine/distill.py)
    projection: nn.Module | None = None  # --distill_type feature: trained with the model, saved apart from it
    _net: nn.Module | None = None

    def net(self) -> nn.Module:
        """What runs the batches: DDP and/or compiled around ``model``, whose weights are saved (built again
        after :meth:`unfreeze`: DDP registers the parameters that train when it is made)."""
        if self._net is None:
            out = self.model
            if self.info.distributed:
                device = self.info.device
                out = torch.nn.parallel.DistributedDataParallel(
                    self.model, device_ids=[device.index] if device.type == "cuda" else None)
            self._net = torch.compile(out) if self.compile else out
        return self._net

    def unfreeze(self) -> None:
        """Let the frozen backbone train from now on (and wrap the model again)."""
        unfreeze(self.model, self.frozen)
        self.frozen, self._net = None, None
        self.net()

    def train_epoch(self, epoch: int, *, progress: bool, start_batch: int = 0,
                    partial: dict[str, float] | None = None, should_stop: Callable[[], bool] | None = None,
                    on_step: Callable[[int, float], bool] | None = None,
                    save_point: Callable[[int, dict[str, float]], None] | None = None,
                    step_log: StepLog | None = None) -> dict[str, Any]:
        """One epoch of ``engine.train_one_epoch`` with these parts (the loader's sampler set by the caller)."""
        return train_one_epoch(self.net(), self.train_loader, self.criterion, self.optimizer,
                               preprocess=self.preprocess, scheduler=self.scheduler, scaler=self.scaler,
                               dtype=self.dtype, accumulation_steps=self.accumulation_steps, epoch=epoch,
                               progress=progress, batch_hook=self.batch_hook, ema=self.ema, clip_grad=self.clip_grad,
                               start_batch=start_batch, partial=partial, should_stop=should_stop, on_step=on_step,
                               save_point=save_point, multi_label=self.multi_label, step_log=step_log,
                               distiller=self.distiller)


def build_training_parts(cfg: argparse.Namespace, class_names: Sequence[str], info: DistInfo, *, lr: float,
                         train_options: bool = True) -> TrainingParts:
    """Every part of a training run from ``cfg``, in an order that keeps runs reproducible (seed, model, data,
    loss, batch hook, optimizer, freezing, schedule, EMA, precision); ``lr`` is the optimizer's base LR.

    ``train_options=False`` (the LR range test) builds only what a bare sweep of steps reads: no validation
    set, no schedule (the caller sets its own), no EMA, no fp16 scaler, no gradient clipping, and none of
    gradient checkpointing, SyncBatchNorm, channels_last, freezing or compiling.
    """
    num_classes = len(class_names)
    device = info.device
    seed_everything(cfg.seed)
    model = _build_model(cfg, num_classes, info, train_options)
    train_set = build_dataset(cfg, "train", class_names, train=True, policy=build_policy(cfg))
    val_set = build_dataset(cfg, "val", class_names, train=False) if train_options else None
    train_loader = build_loader(cfg, train_set, train=True, device=device, dist_info=info)
    val_loader = None
    if val_set is not None:
        val_loader = build_loader(cfg, val_set, train=False, device=device, dist_info=info)
        start_workers(val_loader)  # fork its workers while this process is small (see start_workers)
        logger.info("train %d images, val %d images", len(train_set), len(val_set))
    # the class frequencies only --class_weights auto reads (streamed shards do not know them up front)
    counts = label_counts(train_set.targets) if train_set.kind != "wds" or needs_class_counts(cfg) else Counter()
    class_counts = [counts[c] for c in range(num_classes)]
    criterion = build_criterion(cfg, class_counts, num_samples=len(train_set)).to(device)
    val_criterion = build_criterion(cfg, class_counts, plain=True) if train_options else None  # the plain head
    batch_hook = build_batch_hook(cfg, train_set)
    distiller, projection = None, None
    if train_options and cfg.teacher:  # its RNG use apart: the student's run draws what it draws without a teacher
        with torch.random.fork_rng(devices=[device.index or 0] if device.type == "cuda" else []):
            distiller, projection = build_online_teacher(cfg, model, class_names, info)
    optimizer = build_optimizer(cfg, model, lr, num_classes, also=projection)  # every parameter, frozen ones too
    # --freeze_backbone: frozen from the start; the epoch loop unfreezes at --unfreeze_epoch (a resumed
    # run past it unfreezes before its first epoch), so the state always follows from the epoch.
    # The SWA copy is made before that: a copy of the frozen model would keep its frozen batch norms (no
    # requires_grad, eval-mode hooks) after the model unfreezes, and its final BN pass would skip them.
    swa = AveragedModel(model) if train_options and getattr(cfg, "swa_epochs", 0) else None
    frozen = None
    if train_options and cfg.freeze_backbone:
        frozen = freeze_backbone(model, head_parameter_names(model, num_classes))
    steps_per_epoch = math.ceil(len(train_loader) / cfg.accumulation_steps)
    scheduler = _build_scheduler(cfg, optimizer, steps_per_epoch) if train_options else None
    ema = ModelEma(model, cfg.ema_decay) if train_options and cfg.ema else None
    dtype = amp_dtype(cfg.amp, cfg.amp_dtype, device)
    scaler = torch.amp.GradScaler(device.type) if train_options and dtype == torch.float16 else None
    parts = TrainingParts(
        model=model, info=info, train_set=train_set, train_loader=train_loader, val_set=val_set,
        val_loader=val_loader, criterion=criterion, val_criterion=val_criterion, batch_hook=batch_hook,
        optimizer=optimizer, scheduler=scheduler, ema=ema, swa=swa, dtype=dtype, scaler=scaler,
        preprocess=preprocessor(cfg, device), frozen=frozen, steps_per_epoch=steps_per_epoch,
        accumulation_steps=cfg.accumulation_steps, clip_grad=cfg.clip_grad if train_options else None,
        compile=bool(cfg.compile) and train_options, multi_label=cfg.multi_label, distiller=distiller,
        projection=projection)
    parts.net()
    return parts


def _build_model(cfg: argparse.Namespace, num_classes: int, info: DistInfo, train_options: bool) -> nn.Module:
    """``--arch`` on the run's device, with the memory options (``train_options``) applied."""
    model = create_model(cfg.arch, num_classes, pretrained=cfg.pretrained, drop_rate=cfg.drop_rate,
                         drop_path_rate=cfg.drop_path_rate, in_chans=cfg.in_chans)
    if train_options and cfg.use_checkpoint:
        enable_gradient_checkpointing(model, cfg.arch)
    if train_options and cfg.sync_bn and info.distributed:  # a CPU run was refused in train.run()
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        logger.info("batch norms converted to SyncBatchNorm")
    model.to(info.device)
    if train_options and cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    return model


def _build_scheduler(cfg: argparse.Namespace, optimizer: torch.optim.Optimizer, steps_per_epoch: int) -> Any:
    """``--scheduler`` over the run's optimizer steps (warmup and milestones given in epochs)."""
    return create_scheduler(
        optimizer, schedule=cfg.scheduler, total_steps=cfg.epochs * steps_per_epoch,
        warmup_steps=round(cfg.warmup * steps_per_epoch),
        milestones=[round(e * steps_per_epoch) for e in cfg.lr_steps] if cfg.lr_steps else None,
        ratios=cfg.lr_ratios, power=cfg.poly_power, pct_start=cfg.onecycle_pct)
