"""What a training run does at the end of each epoch, after validation: the best-epoch choice, the history
row, metrics.json, TensorBoard, the tracker, the checkpoint and the log line (as timm's ``update_summary``
plus its ``CheckpointSaver``, or mmpretrain's epoch-end hooks)."""
from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any, Callable

from utils.atomic import write_json_atomic
from utils.distributed import gather_objects
from utils.eval_metric import EVAL_METRICS, EvalMetric

from .early_stop import EarlyStopping
from .state import CheckpointSaver

logger = logging.getLogger(__name__)

# TensorBoard tags that do not follow the ``<split>_<metric>`` -> ``<split>/<metric>`` rule
TAGS = {"lr": "train/lr", "img_per_s": "train/img_per_s"}


MULTI_LABEL_KEYS = ("map", "of1", "cf1")  # a multi-label evaluation's metrics (percent)
SINGLE_LABEL_KEYS = ("macro_f1", "balanced_acc")  # a single-label evaluation's metrics beside top-1/top-5
HEADLINE = ("mAP", "map")


def headline(result: dict[str, Any], metric: EvalMetric | None = None) -> float:
    """The validation number that chooses best.pth: ``metric``'s (``--eval_metric``), by default mAP for a
    multi-label model, else top-1."""
    if metric is None:
        metric = EVAL_METRICS["map" if "map" in result else "top1"]
    return result[metric.result_key]


def warn_if_diverging(val_loss: float, history: list[dict], epoch: int, factor: float = 100.0) -> bool:
    """Warn when the validation loss is ``factor`` times its best so far (a run diverging without yet
    reaching inf/nan); returns whether it warned, so the caller warns once per run."""
    best = min((row["val_loss"] for row in history if math.isfinite(row["val_loss"])), default=math.inf)
    if not val_loss > factor * best:
        return False
    logger.warning("epoch %d: val loss %.3g is over %gx its best (%.3g): training is diverging; add --clip_grad "
                   "(e.g. --clip_grad 5) or lower --lr", epoch + 1, val_loss, factor, best)
    return True


class EpochEnd:
    """The bookkeeping after each validated epoch, called on every rank (only ``write`` ranks write files).

    ``capture(epoch=, best_top1=, best_epoch=, history=)`` returns the checkpoint dict (``TrainState.capture``
    with the spec and config bound); ``writer`` is a TensorBoard ``SummaryWriter`` (or None) and ``recorder``
    anything with ``epoch(row)`` (the run's trackers): both duck-typed, so that the engine imports neither.
    ``history`` is the run's list of rows, extended in place. The saver's metric (``--eval_metric``) chooses
    best.pth and feeds ``early_stop`` (``--patience``), whose counter each checkpoint carries.
    """

    def __init__(self, run_dir: Path, epochs: int, saver: CheckpointSaver, writer: Any, recorder: Any,
                 capture: Callable[..., dict[str, Any]], history: list[dict], *, write: bool,
                 skip_bad_images: bool, early_stop: EarlyStopping | None = None) -> None:
        self.run_dir, self.epochs, self.saver, self.writer, self.recorder = run_dir, epochs, saver, writer, recorder
        self.early_stop = early_stop  # --patience (None: made at the first epoch, with the saver's metric)
        self.capture, self.history = capture, history
        self.write, self.skip_bad_images = write, skip_bad_images
        self.diverging = False  # warned once per run
        self.thresholds: tuple[float, ...] = ()  # multi-label: the last epoch's tuned thresholds (--tune_thresholds)

    def __call__(self, epoch: int, tr: dict[str, Any], va: dict[str, Any], va_ema: dict[str, Any] | None) -> bool:
        """Record epoch ``epoch`` (training metrics ``tr``, validation ``va`` and, with EMA, ``va_ema``);
        returns whether it is the new best (``early_stop.stopped_epoch`` says whether the run stops here)."""
        if self.saver.metric is None:
            self.saver.metric = EVAL_METRICS["map" if "map" in va else "top1"]
        if self.early_stop is None:
            self.early_stop = EarlyStopping(self.saver.metric)
        value = headline(va, self.saver.metric)
        is_best = self.saver.update_best(epoch, value, va["loss"], self.history)
        self.early_stop.step(epoch, value)
        row = self._row(epoch, tr, va, va_ema)
        self.diverging = self.diverging or warn_if_diverging(va["loss"], self.history, epoch)
        self.history.append(row)
        self.recorder.epoch(row)
        self.thresholds = tuple(va.get("thresholds", ()))
        state = self.capture(epoch=epoch, best_top1=self.saver.best_top1, best_epoch=self.saver.best_epoch,
                             history=self.history, thresholds=self.thresholds,
                             early_stop=self.early_stop.state_dict())
        if self.write:  # best: best.pth is linked to last.pth's file, not written again; the kept epochs too
            self.saver.save(state, is_best, history=self.history)
            write_json_atomic(self.run_dir / "metrics.json", {"history": self.history})
        self._tensorboard(epoch, row)
        ema = f"  ema {HEADLINE[0]} {headline(va_ema):.2f}" if va_ema is not None and "map" in va else \
            f"  ema top-1 {row['val_ema_top1']:.2f}" if va_ema is not None else ""
        val = (f"mAP {va['map']:.2f} OF1 {va['of1']:.2f} CF1 {va['cf1']:.2f} p@1 {va['top1']:.2f}" if "map" in va else
               f"top-1 {va['top1']:.2f} top-5 {va['top5']:.2f}")
        if self.saver.metric.name in SINGLE_LABEL_KEYS:  # the eval metric, when the line does not show it already
            val += f" {self.saver.metric.label} {value:.2f}"
        teacher = f"  teacher {row['teacher_share']:.0%} of step time" if "teacher_share" in row else ""
        logger.info("epoch %d/%d  train loss %.4f %s %.2f  val loss %.4f %s%s  lr %.2e  %.0f img/s%s%s", epoch + 1,
                    self.epochs, tr["loss"], "p@1" if "map" in va else "top-1", tr["top1"], va["loss"], val, ema,
                    tr["lr"], tr["img_per_s"], teacher, "  *best*" if is_best else "")
        return is_best

    def save_mid_epoch(self, epoch: int, batches_done: int, partial: dict[str, float]) -> None:
        """Save last.pth in the middle of epoch ``epoch`` after ``batches_done`` batches, with every rank's running
        sums (``partial``: this rank's), so that a rerun continues at the next batch: for a stop signal and
        ``--save_every_steps`` alike. Under DDP every rank calls it at the same step (it gathers the sums);
        the ``write`` rank saves."""
        state = self.capture(epoch=epoch - 1, best_top1=self.saver.best_top1, best_epoch=self.saver.best_epoch,
                             history=self.history, thresholds=self.thresholds,
                             early_stop=None if self.early_stop is None else self.early_stop.state_dict())
        state["resume_at"] = {"epoch": epoch, "batch": batches_done, "partial": gather_objects(dict(partial))}
        if self.write:
            self.saver.save(state)

    def _row(self, epoch: int, tr: dict[str, Any], va: dict[str, Any], va_ema: dict[str, Any] | None) -> dict:
        """The epoch's history row (metrics.json, the tracker, TensorBoard)."""
        row = {"epoch": epoch, "train_loss": tr["loss"], "train_top1": tr["top1"], "lr": tr["lr"],
               "val_loss": va["loss"], "val_top1": va["top1"], "val_top5": va["top5"],
               "img_per_s": tr["img_per_s"], "time": tr["time"]}
        if "teacher_time" in tr:  # --teacher: the share of the training steps' time spent in the teacher
            row["teacher_share"] = tr["teacher_time"] / max(tr["time"], 1e-9)
        if self.skip_bad_images:  # the images that failed to decode (the caller warns about them)
            row.update(skipped_train=tr["skipped"], skipped_val=va["skipped"])
        if va_ema is not None:
            row.update(val_ema_loss=va_ema["loss"], val_ema_top1=va_ema["top1"], val_ema_top5=va_ema["top5"])
        for key in (*SINGLE_LABEL_KEYS, *MULTI_LABEL_KEYS):  # macro F1 and balanced accuracy; multi-label: mAP, F1
            for prefix, result in (("val", va), ("val_ema", va_ema)):
                if result is not None and key in result:
                    row[f"{prefix}_{key}"] = result[key]
        return row

    def _tensorboard(self, epoch: int, row: dict[str, Any]) -> None:
        """The row's numbers as TensorBoard scalars at step ``epoch + 1`` (written ranks only)."""
        for key, value in row.items() if self.write else ():
            if key not in ("epoch", "time") and not key.startswith("skipped"):
                self.writer.add_scalar(TAGS.get(key, key.replace("_", "/", 1)), value, epoch + 1)
        if self.writer is not None:
            self.writer.flush()
