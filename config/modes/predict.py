"""``--predict``: its flags and checks."""
from __future__ import annotations

import argparse
from pathlib import Path

from config.base import FlagGroup, Mode, need
from config.modes.evaluation import UNKNOWN


def _add_predict(g: argparse._ArgumentGroup) -> None:
    g.add_argument("--topk", type=int, default=5, help="classes listed per image by --predict")
    g.add_argument("--class_indices", type=str, default=None,
                   help="JSON list or {index: name} map of class names, for checkpoints that carry none")
    g.add_argument("-v", "--visualize", action="store_true",
                   help="--predict: save each image annotated with its top classes")
    g.add_argument("-s", "--save_log", action="store_true", help="--predict: also write a log of every prediction")


def _check_predict(cfg: argparse.Namespace) -> None:
    need(cfg.topk >= 1, f"--topk must be >= 1, got {cfg.topk}")


def _predict_files(cfg: argparse.Namespace, given: set[str]) -> None:
    hub = "dataset" in given and cfg.dataset == "hf"  # --predict may name a Hub dataset in the datasets cache
    for flag in ("predict", "class_indices"):
        path = getattr(cfg, flag)
        need(path is None or Path(path).exists() or (flag == "predict" and hub), f"--{flag}: {path!r} does not exist")


PREDICT = FlagGroup("predict", _add_predict, _check_predict, resume_safe=True)

MODES = (
    Mode("predict", "applications.predict",
         lambda g: g.add_argument("--predict", type=str, default=None, metavar="SOURCE",
                                  help="classify an image, a folder (recursive), a txt list, or every row of a Hugging "
                                       "Face dataset (a folder; with --dataset hf also a cached Hub name; rows named "
                                       "<split>/<row>) with --resume; writes predictions.csv"),
         groups=(PREDICT, UNKNOWN), flags=("tta", "use_test_size"), needs_checkpoint=True, check_files=_predict_files,
         reads_labels=False),
)
