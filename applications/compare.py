"""``--compare RUN [RUN ...]``: one table of many runs (the flags that differ, best val and test top-1, or mAP
for multi-label runs, epochs done and planned, time, speed, status), written as compare.md / compare.csv with the
curves in compare.png (the loss on a log axis, a legend of every run below the plots).

Reads only each run's config.yaml, metrics.json and the last line of its log (see ``experiments.runs``):
no torch, so it stays fast over hundreds of runs.
"""
from __future__ import annotations

import argparse
import logging
from typing import Any

from config import SORT_KEYS
from experiments.runs import compare_runs

logger = logging.getLogger(__name__)


def run(cfg: argparse.Namespace) -> dict[str, Any]:
    """Compare the runs under ``cfg.compare``, best ``cfg.sort_by`` first (default: the runs' headline, see
    ``experiments.runs.default_sort_key``); print the table."""
    result = compare_runs(cfg.compare, sort_by=cfg.sort_by, larger_is_better=SORT_KEYS.get(cfg.sort_by, True))
    print(result.pop("table"), flush=True)
    logger.info("compared %d runs: %s, %s, %s", result["runs"], result["markdown"], result["csv"], result["plot"])
    return result
