"""``--evaluation`` (``applications/evaluation.py``): its flags and checks."""
from __future__ import annotations

import argparse
from pathlib import Path

from config.base import FlagGroup, Mode, need


def _add_evaluation(g: argparse._ArgumentGroup) -> None:
    g.add_argument("--eval_split", choices=["train", "val", "test"], default="test",
                   help="split for --evaluation (and the sample images of --jit and --onnx)")
    g.add_argument("--out", type=str, default=None,
                   help="with --evaluation: write per-image predictions to this .json, .yaml or .pkl file")


def _check_evaluation(cfg: argparse.Namespace) -> None:
    if cfg.out is not None:
        need(Path(cfg.out).suffix in (".json", ".yaml", ".yml", ".pkl"),
             f"--out must end in .json, .yaml or .pkl, got {cfg.out!r}")


EVALUATION = FlagGroup("evaluation", _add_evaluation, _check_evaluation, resume_safe=True)


def _add_unknown(g: argparse._ArgumentGroup) -> None:
    g.add_argument("--reject_below", type=float, default=None, metavar="P",
                   help="answer 'unknown' when the top (calibrated, see --calibrate) probability is below P: "
                        "--predict writes unknown, --evaluation reports the coverage and the accuracy on the "
                        "images answered (single-label models)")


def _check_unknown(cfg: argparse.Namespace) -> None:
    need(cfg.reject_below is None or 0 < cfg.reject_below <= 1,
         f"--reject_below must be a probability in (0, 1], got {cfg.reject_below}")


# read by --evaluation and --predict
UNKNOWN = FlagGroup("unknown (selective prediction)", _add_unknown, _check_unknown, resume_safe=True)

MODES = (
    Mode("evaluation", "applications.evaluation",
         lambda g: g.add_argument("--evaluation", action="store_true",
                                  help="evaluate a checkpoint (--resume) on --eval_split: metrics, confusion "
                                       "matrix, predictions"),
         groups=(EVALUATION, UNKNOWN), needs_checkpoint=True),
)
