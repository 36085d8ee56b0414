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


def _add_test_size(g: argparse._ArgumentGroup) -> None:
    g.add_argument("--use_test_size", action="store_true",
                   help="evaluate at the test size and crop fraction of the pretrained weights the model was "
                        "fine-tuned from (timm's test_input_size/test_crop_pct, kept in the checkpoint): "
                        "--evaluation, --predict, the final test of --train, and the input of --jit/--onnx/"
                        "--openvino exports; refused when the weights define none")


# Read by --evaluation, and as a single flag by --predict, --train and the exports (their Mode flags).
TEST_SIZE = FlagGroup("test size", _add_test_size, resume_safe=True)

MODES = (
    Mode("evaluation", "applications.evaluation",
         lambda g: g.add_argument("--evaluation", action="store_true",
                                  help="evaluate a checkpoint (--resume) on --eval_split: metrics, confusion "
                                       "matrix, predictions"),
         groups=(EVALUATION, TEST_SIZE), needs_checkpoint=True),
)
