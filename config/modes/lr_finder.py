"""``--lr_finder``: its flags and checks; it trains, so it reads most of ``--train``'s groups."""
from __future__ import annotations

import argparse

from config.base import FlagGroup, Mode, need
from config.modes.train import AUGMENTATION, LOSS, OPTIMIZER, WEIGHTS


def _add_range(g: argparse._ArgumentGroup) -> None:
    g.add_argument("--lr_finder_min", type=float, default=1e-6, help="LR range test: start LR")
    g.add_argument("--lr_finder_max", type=float, default=10.0, help="LR range test: end LR")
    g.add_argument("--lr_finder_steps", type=int, default=100, help="LR range test: number of steps")


def _check_range(cfg: argparse.Namespace) -> None:
    need(0 < cfg.lr_finder_min < cfg.lr_finder_max and cfg.lr_finder_steps >= 2,
         "--lr_finder_min must be positive and below --lr_finder_max, and --lr_finder_steps >= 2")


LR_RANGE = FlagGroup("LR range test", _add_range, _check_range, resume_safe=True)

MODES = (
    Mode("lr_finder", "applications.lr_finder",
         lambda g: g.add_argument("--lr_finder", action="store_true",
                                  help="LR range test: a short sweep with an exponentially growing LR; saves "
                                       "lr_finder.png"),
         groups=(LR_RANGE, WEIGHTS, OPTIMIZER, AUGMENTATION, LOSS), flags=("channels_last",)),
)
