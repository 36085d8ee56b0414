"""The engine below the modes: the loops, the train state, the epoch-end bookkeeping (``epoch_end``), the stop
request (``stop``), precision, the evaluation report.

Plain functions and objects with explicit arguments: nothing here reads the run's config, and nothing
imports ``applications/``.
"""
from .loops import batch_sizes, evaluate, non_finite_loss, precise_bn, train_one_epoch
from .precision import amp_dtype, autocast
from .report import evaluate_and_report, write_predictions

__all__ = ["train_one_epoch", "evaluate", "batch_sizes", "non_finite_loss", "precise_bn", "amp_dtype", "autocast",
           "evaluate_and_report", "write_predictions"]
