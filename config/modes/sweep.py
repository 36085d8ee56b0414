"""``--sweep``: its flags and checks; it passes every training flag on to its runs."""
from __future__ import annotations

import argparse
import re

from config.base import FlagGroup, Mode, need, need_file
from config.modes import train
from config.modes.compare import COMPARE


def _add_sweep(g: argparse._ArgumentGroup) -> None:
    g.add_argument("--sweep_devices", type=str, default=None, metavar="LIST",
                   help="--sweep: comma-separated devices, one run on each at a time: CUDA indices (0,1,2,3) or cpu; "
                        "a device listed twice runs two at once (default: one run at a time, default device)")
    g.add_argument("--sweep_only", type=str, nargs="+", default=None, metavar="TAG",
                   help="--sweep with a grid or named variants: run (and compare) only these variants, by tag")
    g.add_argument("--trials", type=int, default=None,
                   help="--sweep with a search space: trials the study should hold (default: the file's trials)")
    g.add_argument("--study_storage", type=str, default=None, metavar="URL",
                   help="--sweep search: Optuna RDB URL shared by every worker (default: sqlite in the sweep folder)")
    g.add_argument("--max_variants", type=int, default=1000, metavar="N",
                   help="--sweep with a grid: refuse a grid of more combinations than this (counted before any "
                        "is made)")


def _check_sweep(cfg: argparse.Namespace) -> None:
    need(cfg.trials is None or cfg.trials >= 1, f"--trials must be >= 1, got {cfg.trials}")
    need(cfg.max_variants >= 1, f"--max_variants must be >= 1, got {cfg.max_variants}")
    if cfg.sweep_devices is not None:
        need(all(re.fullmatch(r"\d+|cpu", d.strip()) for d in cfg.sweep_devices.split(",")),
             f"--sweep_devices must be comma-separated CUDA indices or cpu (e.g. 0,1 or cpu,cpu), "
             f"got {cfg.sweep_devices!r}")


def _sweep_files(cfg: argparse.Namespace, given: set[str]) -> None:
    need_file(cfg.sweep, "sweep")


SWEEP = FlagGroup("sweep", _add_sweep, _check_sweep, resume_safe=True)

MODES = (
    Mode("sweep", "applications.sweep",
         lambda g: g.add_argument("--sweep", type=str, default=None, metavar="FILE",
                                  help="run the grid, the named variants or the Optuna search of a sweep YAML file, "
                                       "one run directory per variant, then compare them"),
         groups=(SWEEP, COMPARE, *train.GROUPS), flags=train.MODES[0].flags, check_files=_sweep_files),
)
