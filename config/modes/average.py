"""``--average CKPT ... --out FILE`` (``applications/average.py``): its flags and checks."""
from __future__ import annotations

import argparse
import re
from pathlib import Path

from config.base import FlagGroup, Mode, need, need_file

KEPT = re.compile(r"(last|best):(\d+)")  # of the run <output>/<arch>/<tag> (its checkpoints/kept.json)


def _add_average(g: argparse._ArgumentGroup) -> None:
    g.add_argument("--bn_batches", type=int, default=100, metavar="N",
                   help="with --average: recompute batch-norm statistics over N training batches (0: keep the "
                        "averaged statistics)")


def _check_average(cfg: argparse.Namespace) -> None:
    need(cfg.bn_batches >= 0, f"--bn_batches must be >= 0 batches, got {cfg.bn_batches}")
    if not cfg.average:
        return
    need(cfg.out is not None and Path(cfg.out).suffix == ".pth",
         f"--average writes the averaged checkpoint to --out FILE.pth, got --out {cfg.out!r}")
    for item in cfg.average:
        match = KEPT.fullmatch(item)
        need(match is None or int(match[2]) >= 1, f"--average {item}: K must be >= 1")


def _average_files(cfg: argparse.Namespace, given: set[str]) -> None:
    for item in cfg.average:
        if not KEPT.fullmatch(item):
            need_file(item, "average", what="checkpoint", hint=" (or use last:K / best:K of a run's kept epochs)")


def _data_checkpoint(cfg: argparse.Namespace) -> str:
    """The checkpoint whose data (and task) --average uses without --data: its first file, or for last:K /
    best:K the run's last.pth."""
    first = cfg.average[0]
    return str(Path(cfg.output) / cfg.arch.replace("/", "-") / cfg.tag / "checkpoints" / "last.pth"
               if KEPT.fullmatch(first) else first)


AVERAGE = FlagGroup("average", _add_average, _check_average)

MODES = (
    Mode("average", "applications.average",
         lambda g: g.add_argument("--average", type=str, nargs="+", default=None, metavar="CKPT",
                                  help="average the weights of checkpoints (paths, or last:K / best:K of the run "
                                       "<output>/<arch>/<tag> kept by --keep_last / --checkpoint_hist), recompute "
                                       "batch-norm statistics, evaluate on --eval_split and write --out FILE.pth"),
         groups=(AVERAGE,), flags=("out", "eval_split"), check_files=_average_files, data_checkpoint=_data_checkpoint),
)
