"""The train state: what a run saves to resume exactly, and its mirror image that restores it.

``TrainState`` holds the parts a run changes (model, optimizer, schedule, scaler, the loss's own state,
EMA): ``capture`` turns them into a checkpoint dict, ``restore`` loads one back and says where the run
continues. ``CheckpointSaver`` owns the checkpoint folder (as timm's CheckpointSaver): ``last.pth``
written safely every epoch (the one before kept as ``last.pth.prev``), ``best.pth`` linked to the best
epoch's file, the fallback to ``last.pth.prev`` when ``last.pth`` cannot be read.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
import torch.nn as nn

from models import extract_state_dict, load_state_dict_checked
from models.spec import ModelSpec
from optim import ModelEma
from utils.atomic import remove_stale_temporaries
from utils.checkpoint import (
    CheckpointError,
    capture_rng_state,
    link_checkpoint,
    load_checkpoint,
    previous_path,
    restore_rng_state,
    save_checkpoint,
)

logger = logging.getLogger(__name__)


@dataclass
class Progress:
    """Where a run stands: the epoch (and batch, with this rank's running sums) to continue at, the
    best validation top-1 so far and its epoch (what best.pth holds), and the per-epoch history."""
    start_epoch: int = 0
    start_batch: int = 0
    partial: dict[str, float] | None = None
    best_top1: float = -1.0
    best_epoch: int | None = None
    history: list[dict] = field(default_factory=list)
    thresholds: tuple[float, ...] = ()  # multi-label: the decision thresholds the checkpoint's spec carries


def improves_on_best(top1: float, loss: float, *, best_top1: float, best_epoch: int | None,
                     history: Sequence[Mapping[str, Any]]) -> bool:
    """Whether an epoch with validation ``top1`` and ``loss`` replaces best.pth (epoch ``best_epoch``, top-1
    ``best_top1``): a higher top-1, or the same top-1 with a lower validation loss than that epoch's row
    in ``history``.

    The tie-break matters on small validation sets, where top-1 moves in steps of one image and reaches its
    maximum early: the first epoch at that maximum is often a less trained model (higher loss, mid-schedule
    weights) than a later one that ties it."""
    if top1 != best_top1:
        return top1 > best_top1
    best = next((row for row in history if row.get("epoch") == best_epoch), None)
    return best is not None and loss < best["val_loss"]  # no row: a checkpoint from before best_epoch existed


@dataclass
class TrainState:
    """The parts of a training run that change as it trains, saved together and restored together."""
    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: torch.amp.GradScaler | None = None
    criterion: nn.Module | None = None
    ema: ModelEma | None = None

    def capture(self, *, epoch: int, best_top1: float, best_epoch: int | None, spec: ModelSpec,
                config: Mapping[str, Any], history: list[dict]) -> dict[str, Any]:
        """Everything needed to resume exactly: weights (and their EMA), optimizer, schedule, scaler, the
        loss's own state (GHM's moving averages), RNG, bookkeeping (the best epoch: what best.pth holds),
        the model's spec and the run's config (a plain dict)."""
        return {
            "model": self.model.state_dict(),
            "model_ema": self.ema.module.state_dict() if self.ema is not None else None,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "criterion": self.criterion.state_dict() if self.criterion is not None else {},
            "epoch": epoch,
            "best_top1": best_top1,
            "best_epoch": best_epoch,  # the epoch best.pth holds: checked when a run resumes and at its end
            "rng": capture_rng_state(),
            "class_names": list(spec.class_names),
            "arch": spec.arch,
            "model_spec": spec.to_dict(),
            "config": dict(config),
            "history": history,
        }

    def restore(self, ckpt: Mapping[str, Any], path: Path, *, class_names: Sequence[str], rank: int = 0,
                world_size: int = 1) -> Progress:
        """Load what :meth:`capture` saved (``path`` names it in errors) and return where the run continues.

        A checkpoint of other classes, or of weights only, is a CheckpointError. Stopped in the middle
        of an epoch, the run continues at the next batch of that epoch with this rank's running sums
        (when the number of processes is the same)."""
        if ckpt.get("class_names") not in (None, list(class_names)):
            raise CheckpointError(f"{path} was trained on classes {ckpt['class_names'][:10]}, "
                                  f"the data has {list(class_names)[:10]}")
        load_state_dict_checked(self.model, extract_state_dict(ckpt), path)
        if "optimizer" not in ckpt:
            raise CheckpointError(f"{path} holds weights only and cannot be resumed; "
                                  f"use --pretrained to start a new run from it")
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        if self.scaler is not None and ckpt.get("scaler"):
            self.scaler.load_state_dict(ckpt["scaler"])
        if self.criterion is not None and ckpt.get("criterion"):
            self.criterion.load_state_dict(ckpt["criterion"])
        if self.ema is not None:
            self.ema.module.load_state_dict(ckpt["model_ema"] if ckpt.get("model_ema") else self.model.state_dict())
        restore_rng_state(ckpt["rng"])
        progress = Progress(start_epoch=ckpt["epoch"] + 1, best_top1=ckpt["best_top1"],
                            best_epoch=ckpt.get("best_epoch"), history=list(ckpt.get("history", [])),
                            thresholds=tuple((ckpt.get("model_spec") or {}).get("thresholds") or ()))
        if ckpt.get("resume_at"):  # stopped mid-epoch: continue at the next batch of that epoch
            progress.start_epoch, progress.start_batch = ckpt["resume_at"]["epoch"], ckpt["resume_at"]["batch"]
            partials = ckpt["resume_at"]["partial"]  # one per rank
            progress.partial = partials[rank] if len(partials) == world_size else None
        return progress


class CheckpointSaver:
    """The checkpoint folder of a run: ``last.pth`` (and ``last.pth.prev``), ``best.pth`` linked to it."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.last, self.best = self.folder / "last.pth", self.folder / "best.pth"
        # the epoch best.pth holds and its validation top-1 (None and -1: no epoch validated yet)
        self.best_top1: float = -1.0
        self.best_epoch: int | None = None

    def adopt(self, progress: Progress) -> None:
        """Take over the best epoch a resumed run recorded (``progress`` from :meth:`TrainState.restore`)."""
        self.best_top1, self.best_epoch = progress.best_top1, progress.best_epoch

    def update_best(self, epoch: int, top1: float, loss: float, history: Sequence[Mapping[str, Any]]) -> bool:
        """Whether epoch ``epoch`` (validation ``top1`` and ``loss``) becomes the best, by
        :func:`improves_on_best` against ``history`` (the rows before this epoch's); if so it is recorded."""
        is_best = improves_on_best(top1, loss, best_top1=self.best_top1, best_epoch=self.best_epoch, history=history)
        if is_best:
            self.best_top1, self.best_epoch = top1, epoch
        return is_best

    def save(self, state: dict[str, Any], is_best: bool = False) -> None:
        """Write ``state`` as last.pth (the previous one kept); when ``is_best`` link best.pth to the same
        file rather than writing it again."""
        save_checkpoint(state, self.last, keep_previous=True)
        if is_best:
            link_checkpoint(self.last, self.best)

    def tidy(self, resumed_from: Path | None, best_epoch: int | None = None) -> None:
        """Before a run writes here: temporaries of a run killed mid-write go, and when resuming from this
        folder best.pth is made to hold ``best_epoch`` (by default the saver's own) again (see
        :meth:`restore_best_link`)."""
        if not self.folder.is_dir():
            return
        remove_stale_temporaries(self.folder)
        if resumed_from is not None and resumed_from.parent.resolve() == self.folder.resolve():
            self.restore_best_link(best_epoch)

    def restore_best_link(self, best_epoch: int | None = None) -> None:
        """Make ``best.pth`` the checkpoint of epoch ``best_epoch`` (by default the saver's own best; recorded
        in every checkpoint since the best epoch). A run killed between saving ``last.pth`` and linking
        ``best.pth`` left the previous best there: it is linked again from ``last.pth`` or ``last.pth.prev``,
        whichever holds that epoch."""
        best_epoch = self.best_epoch if best_epoch is None else best_epoch
        if best_epoch is None or end_of_epoch(self.best) == best_epoch:  # None: a checkpoint from before best_epoch
            return
        for source in (self.last, previous_path(self.last)):
            if end_of_epoch(source) == best_epoch:
                logger.warning("%s does not hold the best epoch %d (a run stopped before linking it): linked it to %s",
                               self.best, best_epoch + 1, source.name)
                link_checkpoint(source, self.best)
                return
        logger.warning("%s does not hold the best epoch %d, and no checkpoint here does any more", self.best,
                       best_epoch + 1)

    def load_best(self) -> tuple[dict[str, Any], Path]:
        """best.pth and its path; last.pth (with a warning) in a folder without one."""
        if self.best.is_file():
            return load_checkpoint(self.best), self.best
        logger.warning("%s is missing: evaluating the last weights instead", self.best)  # e.g. assembled by hand
        return load_checkpoint(self.last), self.last

    @staticmethod
    def load_resume(path: Path) -> tuple[dict[str, Any], Path]:
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


def end_of_epoch(path: Path) -> int | None:
    """The epoch whose end ``path`` holds, or None (missing, unreadable, or saved in the middle of an epoch)."""
    try:
        ckpt = load_checkpoint(path, mmap=True)
    except CheckpointError:
        return None
    return None if ckpt.get("resume_at") else ckpt.get("epoch")
