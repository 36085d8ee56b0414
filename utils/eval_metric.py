"""The eval metric (``--eval_metric``): the validation number that chooses best.pth, drives early stopping,
keeps the ``--checkpoint_hist`` epochs and ranks runs in ``--compare`` and searches (timm's ``--eval-metric``).

Torch-free, so that the config and the run comparison read it too. Each metric names the key of
``engine.evaluate``'s result, the key of a history row in metrics.json, and its direction (the validation
loss is the one where lower is better). The tie rule (``rank_key``): equal values are ordered by the lower
validation loss, then by the earlier epoch, so the first epoch of a plateau is never replaced by a later one
that is no better in either.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping


@dataclass(frozen=True)
class EvalMetric:
    """One choice of ``--eval_metric``: its result key, history-row key, direction and how logs say it."""
    name: str
    result_key: str
    row_key: str
    higher_is_better: bool
    label: str


EVAL_METRICS: dict[str, EvalMetric] = {m.name: m for m in (
    EvalMetric("top1", "top1", "val_top1", True, "top-1"),
    EvalMetric("top5", "top5", "val_top5", True, "top-5"),
    EvalMetric("macro_f1", "macro_f1", "val_macro_f1", True, "macro F1"),
    EvalMetric("balanced_acc", "balanced_acc", "val_balanced_acc", True, "balanced accuracy"),
    EvalMetric("val_loss", "loss", "val_loss", False, "loss"),
    EvalMetric("map", "map", "val_map", True, "mAP"),
)}
SINGLE_LABEL_METRICS = ("macro_f1", "balanced_acc")  # computed from one predicted class per image


def eval_metric_of(config: Mapping[str, Any]) -> EvalMetric:
    """The eval metric of a run's config (a dict or an argparse namespace's ``vars``): its ``eval_metric``,
    by default ``map`` for a multi-label run and ``top1`` otherwise (runs saved before the flag existed)."""
    name = config.get("eval_metric") or ("map" if config.get("multi_label") is True else "top1")
    return EVAL_METRICS[name]


def is_better(value: float, best: float, metric: EvalMetric, min_delta: float = 0.0) -> bool:
    """Whether ``value`` beats ``best`` by more than ``min_delta`` in ``metric``'s direction."""
    return value > best + min_delta if metric.higher_is_better else value < best - min_delta


def rank_key(row: Mapping[str, Any], metric: EvalMetric) -> tuple[float, float, int]:
    """A history row's sort key, best first: the metric (its direction), then the lower validation loss,
    then the earlier epoch (the tie rule of best.pth: ``engine.state.improves_on_best``)."""
    value = row[metric.row_key]
    return (-value if metric.higher_is_better else value, row.get("val_loss", 0.0), row["epoch"])
