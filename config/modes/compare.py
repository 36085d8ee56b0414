"""``--compare``: its flags."""
from __future__ import annotations

import argparse

from config.base import FlagGroup, Mode

# --sort_by: the comparison columns a table can be sorted by, and whether larger is better.
SORT_KEYS: dict[str, bool] = {"best_val_top1": True, "test_top1": True, "test_top5": True, "best_val_map": True,
                              "test_map": True, "test_of1": True, "img_per_s": True, "train_min": False,
                              "epochs_done": True, "best_val": True}  # best_val: its eval metric's direction


def _add_compare(g: argparse._ArgumentGroup) -> None:
    g.add_argument("--sort_by", choices=list(SORT_KEYS), default=None,
                   help="--compare and --sweep: the column the table is sorted by, best first (default: best_val, the "
                        "value of the runs' --eval_metric, when they share one other than top1/map; else best_val_map "
                        "when every run is multi-label, else best_val_top1; the mAP columns are multi-label runs', "
                        "the top-1 ones single-label runs')")


COMPARE = FlagGroup("comparison table", _add_compare, resume_safe=True)

MODES = (
    Mode("compare", "applications.compare",
         lambda g: g.add_argument("--compare", type=str, nargs="+", default=None, metavar="RUN",
                                  help="compare run directories (folders searched for runs; globs allowed): prints "
                                       "the table and writes compare.md, compare.csv and compare.png"),
         groups=(COMPARE,)),
)
