"""The train state: what a run saves to resume exactly, and its mirror image that restores it.

``TrainState`` holds the parts a run changes (model, optimizer, schedule, scaler, the loss's own state,
EMA): ``capture`` turns them into a checkpoint dict, ``restore`` loads one back and says where the run
continues. ``CheckpointSaver`` owns the checkpoint folder (as timm's CheckpointSaver): ``last.pth``
written safely every epoch (the one before kept as ``last.pth.prev``), ``best.pth`` linked to the best
epoch's file, the fallback to ``last.pth.prev`` when ``last.pth`` cannot be read.
"""
from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
import torch.nn as nn
from torch.optim.swa_utils import AveragedModel

from models import extract_state_dict, load_state_dict_checked
from models.spec import ModelSpec
from optim import ModelEma
from utils.atomic import remove_stale_temporaries, write_json_atomic
from utils.checkpoint import (
    CheckpointError,
    capture_rng_state,
    link_checkpoint,
    load_checkpoint,
    previous_path,
    restore_rng_state,
    save_checkpoint,
)
from utils.eval_metric import EVAL_METRICS, EvalMetric, is_better, rank_key

logger = logging.getLogger(__name__)

KEPT_INDEX = "kept.json"  # the epochs kept by --checkpoint_hist and --keep_last (CheckpointSaver.keep_epochs)
KEPT_NAME = re.compile(r"epoch_\d+\.pth")  # a kept epoch's file name (CheckpointSaver.epoch_path)
NO_BEST = -1.0  # ``best_top1`` before any epoch was validated (with ``best_epoch`` None)


@dataclass
class Progress:
    """Where a run stands: the epoch (and batch, with this rank's running sums) to continue at, the
    best eval-metric value so far and its epoch (what best.pth holds), the per-epoch history and the early
    stopping counter."""
    start_epoch: int = 0
    start_batch: int = 0
    partial: dict[str, float] | None = None
    best_top1: float = NO_BEST
    best_epoch: int | None = None
    history: list[dict] = field(default_factory=list)
    early_stop: dict[str, Any] | None = None  # EarlyStopping.state_dict() as saved (None: not saved)
    thresholds: tuple[float, ...] = ()  # multi-label: the decision thresholds the checkpoint's spec carries


def improves_on_best(value: float, loss: float, *, best_top1: float, best_epoch: int | None,
                     history: Sequence[Mapping[str, Any]], metric: EvalMetric = EVAL_METRICS["top1"]) -> bool:
    """Whether an epoch with validation ``metric`` ``value`` and ``loss`` replaces best.pth (epoch
    ``best_epoch``, value ``best_top1``: the name stays that of the checkpoint key, the value is the eval
    metric's): a better value in the metric's direction, or the same value with a lower validation loss than
    that epoch's row in ``history`` (equal in both: the earlier epoch stays; ``utils.eval_metric.rank_key``).

    The tie-break matters on small validation sets, where top-1 moves in steps of one image and reaches its
    maximum early: the first epoch at that maximum is often a less trained model (higher loss, mid-schedule
    weights) than a later one that ties it."""
    if best_epoch is None and best_top1 == NO_BEST:
        return True  # nothing validated yet
    if value != best_top1:
        return is_better(value, best_top1, metric)
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
    swa: AveragedModel | None = None  # --swa_epochs: the running average of the last epochs' weights
    projection: nn.Module | None = None  # --distill_type feature: trained beside the model, kept apart from it

    def capture(self, *, epoch: int, best_top1: float, best_epoch: int | None, spec: ModelSpec,
                config: Mapping[str, Any], history: list[dict],
                early_stop: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Everything needed to resume exactly: weights (and their EMA), optimizer, schedule, scaler, the
        loss's own state (GHM's moving averages), RNG, bookkeeping (the best epoch: what best.pth holds),
        the model's spec and the run's config (a plain dict), and the early-stopping counter (``--patience``)."""
        return {
            "model": self.model.state_dict(),
            "model_ema": self.ema.module.state_dict() if self.ema is not None else None,
            "model_swa": self.swa.state_dict() if self.swa is not None else None,
            "distill_projection": self.projection.state_dict() if self.projection is not None else None,
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
            "early_stop": dict(early_stop) if early_stop is not None else None,
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
        if self.projection is not None:
            if not ckpt.get("distill_projection"):
                raise CheckpointError(f"{path} holds no feature-distillation projection, so it was not trained with "
                                      f"--distill_type feature; resume it with the flags it was trained with")
            self.projection.load_state_dict(ckpt["distill_projection"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        if self.scaler is not None and ckpt.get("scaler"):
            self.scaler.load_state_dict(ckpt["scaler"])
        if self.criterion is not None and ckpt.get("criterion"):
            self.criterion.load_state_dict(ckpt["criterion"])
        if self.ema is not None:
            self.ema.module.load_state_dict(ckpt["model_ema"] if ckpt.get("model_ema") else self.model.state_dict())
        if self.swa is not None and ckpt.get("model_swa"):  # else (none saved yet): the average starts afresh
            self.swa.load_state_dict(ckpt["model_swa"])
        restore_rng_state(ckpt["rng"])
        progress = Progress(start_epoch=ckpt["epoch"] + 1, best_top1=ckpt["best_top1"],
                            best_epoch=ckpt.get("best_epoch"), history=list(ckpt.get("history", [])),
                            early_stop=ckpt.get("early_stop"),
                            thresholds=tuple((ckpt.get("model_spec") or {}).get("thresholds") or ()))
        if ckpt.get("resume_at"):  # stopped mid-epoch: continue at the next batch of that epoch
            progress.start_epoch, progress.start_batch = ckpt["resume_at"]["epoch"], ckpt["resume_at"]["batch"]
            partials = ckpt["resume_at"]["partial"]  # one per rank
            progress.partial = partials[rank] if len(partials) == world_size else None
        return progress


class CheckpointSaver:
    """The checkpoint folder of a run: ``last.pth`` (and ``last.pth.prev``), ``best.pth`` linked to it, and the
    epochs kept on request (``--checkpoint_hist N``: the N best by the eval metric; ``--keep_last K``: the
    last K), each as ``epoch_<E>.pth`` (E counted from 1, as the logs count) listed in ``kept.json``."""

    def __init__(self, folder: Path, metric: EvalMetric | None = None, checkpoint_hist: int = 0,
                 keep_last: int = 0):
        self.folder = Path(folder)
        self.last, self.best = self.folder / "last.pth", self.folder / "best.pth"
        # the eval metric; None: the first validation's kind decides (mAP for a multi-label model, else top-1)
        self.metric, self.checkpoint_hist, self.keep_last = metric, checkpoint_hist, keep_last
        # the epoch best.pth holds and its eval-metric value (None and NO_BEST: no epoch validated yet)
        self.best_top1: float = NO_BEST
        self.best_epoch: int | None = None

    def adopt(self, progress: Progress) -> None:
        """Take over the best epoch a resumed run recorded (``progress`` from :meth:`TrainState.restore`)."""
        self.best_top1, self.best_epoch = progress.best_top1, progress.best_epoch

    def update_best(self, epoch: int, value: float, loss: float, history: Sequence[Mapping[str, Any]]) -> bool:
        """Whether epoch ``epoch`` (validation eval-metric ``value`` and ``loss``) becomes the best, by
        :func:`improves_on_best` against ``history`` (the rows before this epoch's); if so it is recorded."""
        is_best = improves_on_best(value, loss, best_top1=self.best_top1, best_epoch=self.best_epoch,
                                   history=history, metric=self.metric or EVAL_METRICS["top1"])
        if is_best:
            self.best_top1, self.best_epoch = value, epoch
        return is_best

    def save(self, state: dict[str, Any], is_best: bool = False,
             history: Sequence[Mapping[str, Any]] | None = None) -> None:
        """Write ``state`` as last.pth (the previous one kept); when ``is_best`` link best.pth to the same
        file rather than writing it again. With ``history`` (an epoch's end: its rows, this epoch's last) the
        epoch is also kept as ``epoch_<E>.pth`` when ``--checkpoint_hist``/``--keep_last`` ask for it
        (:meth:`keep_epochs`)."""
        keeping = bool(history) and bool(self.checkpoint_hist or self.keep_last)
        if keeping and len(history) > 1:
            self._keep_missed(history[-2]["epoch"])
        save_checkpoint(state, self.last, keep_previous=True)
        if is_best:
            link_checkpoint(self.last, self.best)
        if keeping:
            self.keep_epochs(history)

    def epoch_path(self, epoch: int) -> Path:
        """Where epoch ``epoch`` (0-based) is kept: ``epoch_<epoch + 1>.pth``."""
        return self.folder / f"epoch_{epoch + 1}.pth"

    def keep_epochs(self, history: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        """Keep the epoch just saved (last.pth; ``history``'s last row) as ``epoch_<E>.pth``, then write
        ``kept.json`` (the ``checkpoint_hist`` best epochs among those kept, best first by
        ``utils.eval_metric.rank_key``, and the ``keep_last`` last ones, oldest first), then remove the epoch
        files it no longer lists. Each step is atomic (a link renamed into place, an index renamed into place,
        an unlink): a kill leaves at worst a file too many (removed by the next save or :meth:`tidy`), never
        an index naming a missing or half-written file. Returns the index."""
        epoch = history[-1]["epoch"]
        link_checkpoint(self.last, self.epoch_path(epoch))
        rows = [row for row in history if row["epoch"] == epoch or self.epoch_path(row["epoch"]).is_file()]
        ranked = sorted(rows, key=lambda row: rank_key(row, self.metric))[:self.checkpoint_hist]
        last = sorted(row["epoch"] for row in rows)[-self.keep_last:] if self.keep_last else []
        index = {"metric": self.metric.name,
                 "best": [{"epoch": row["epoch"] + 1, "file": self.epoch_path(row["epoch"]).name,
                           "value": row[self.metric.row_key]} for row in ranked],
                 "last": [{"epoch": e + 1, "file": self.epoch_path(e).name} for e in last]}
        write_json_atomic(self.folder / KEPT_INDEX, index)
        self._remove_unlisted(index)
        return index

    def _keep_missed(self, epoch: int) -> None:
        """Before last.pth is replaced: a run killed between saving epoch ``epoch`` and keeping it left no
        ``epoch_<E>.pth``; it is linked from last.pth (or last.pth.prev) while one still holds that epoch, so
        the resumed run keeps the epochs an uninterrupted one does (the index then decides whether it stays)."""
        if self.epoch_path(epoch).is_file():
            return
        for source in (self.last, previous_path(self.last)):
            if end_of_epoch(source) == epoch:
                link_checkpoint(source, self.epoch_path(epoch))
                return

    def _remove_unlisted(self, index: Mapping[str, Any]) -> None:
        """Remove the ``epoch_<E>.pth`` files ``index`` (kept.json) does not list; other names (a user's
        ``epoch_7_calibrated.pth``, an ``--average --out`` file) are never touched."""
        listed = {entry["file"] for group in ("best", "last") for entry in index.get(group, [])}
        for path in self.folder.glob("epoch_*.pth"):
            if KEPT_NAME.fullmatch(path.name) and path.name not in listed:
                path.unlink(missing_ok=True)

    def tidy(self, resumed_from: Path | None, best_epoch: int | None = None) -> None:
        """Before a run writes here: temporaries of a run killed mid-write go, and when resuming from this
        folder best.pth is made to hold ``best_epoch`` (by default the saver's own) again (see
        :meth:`restore_best_link`)."""
        if not self.folder.is_dir():
            return
        remove_stale_temporaries(self.folder)
        self._tidy_kept()
        if resumed_from is not None and resumed_from.parent.resolve() == self.folder.resolve():
            self.restore_best_link(best_epoch)

    def _tidy_kept(self) -> None:
        """Epoch files a run killed between keeping an epoch and updating kept.json left: removed."""
        index_path = self.folder / KEPT_INDEX
        if not index_path.is_file():
            return
        try:
            index = json.loads(index_path.read_text())
        except (OSError, ValueError) as e:
            logger.warning("%s cannot be read (%s): the epoch files there are left as they are", index_path, e)
            return
        self._remove_unlisted(index)

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
