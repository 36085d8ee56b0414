"""``--make_curriculum`` (``applications/curriculum.py``): its flags and checks."""
from __future__ import annotations

import argparse

from config.base import FlagGroup, Mode, need


def _add_curriculum(g: argparse._ArgumentGroup) -> None:
    g.add_argument("--curriculum_thresholds", type=float, nargs="+", default=[0.7, 0.5, 0.3, 0.0],
                   help="--make_curriculum: true-class probability thresholds, high to low")
    g.add_argument("--curriculum_weights", type=float, nargs="+", default=[1.0, 0.7, 0.4, 0.1],
                   help="--make_curriculum: the weight paired with each threshold")
    g.add_argument("--curriculum_file", type=str, default=None, help="curriculum file (default DATA/curriculum.txt)")


def _check_curriculum(cfg: argparse.Namespace) -> None:
    need(len(cfg.curriculum_thresholds) == len(cfg.curriculum_weights),
         f"--curriculum_thresholds ({len(cfg.curriculum_thresholds)} values) and --curriculum_weights "
         f"({len(cfg.curriculum_weights)} values) must pair up")
    need(all(a > b for a, b in zip(cfg.curriculum_thresholds, cfg.curriculum_thresholds[1:])),
         f"--curriculum_thresholds must decrease, got {cfg.curriculum_thresholds}")
    need(all(w >= 0 for w in cfg.curriculum_weights),
         f"--curriculum_weights must be >= 0, got {cfg.curriculum_weights}")


# --train reads --curriculum_file (the weights it trains with), so the group is not resume-safe.
CURRICULUM = FlagGroup("curriculum", _add_curriculum, _check_curriculum)

MODES = (
    Mode("make_curriculum", "applications.curriculum",
         lambda g: g.add_argument("--make_curriculum", action="store_true",
                                  help="score the training images with --resume and write DATA/curriculum.txt "
                                       "(path,weight)"),
         groups=(CURRICULUM,), needs_checkpoint=True),
)
