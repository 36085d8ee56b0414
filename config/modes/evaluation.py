"""``--evaluation`` (``applications/evaluation.py``): its flags and checks."""
from __future__ import annotations

import argparse
from pathlib import Path

from config.base import FlagGroup, Mode, need


def _add_evaluation(g: argparse._ArgumentGroup) -> None:
    g.add_argument("--eval_split", choices=["train", "val", "test"], default="test",
                   help="split for --evaluation (and the sample images of --jit and --onnx)")
    g.add_argument("--out", type=str, default=None,
                   help="with --evaluation: write per-image predictions to this .json, .yaml or .pkl file; with "
                        "--average: the averaged checkpoint (.pth)")
    g.add_argument("--tta", nargs="+", default=None, metavar="MODE",
                   help="test-time augmentation of --evaluation, --predict, a run's final test and --onnx (hflip "
                        "only): hflip, five_crop, ten_crop, or scales S... (factors of the input size, e.g. "
                        "scales 0.875 1 1.125); the probabilities are averaged over the views")


TTA_MODES = ("hflip", "five_crop", "ten_crop", "scales")  # models/tta.py's (tested equal)


def tta_scales(tta: list[str]) -> tuple[float, ...]:
    """The scale factors of ``--tta scales S...`` (empty for the other modes)."""
    return tuple(float(s) for s in tta[1:]) if tta and tta[0] == "scales" else ()


def check_tta(cfg: argparse.Namespace) -> None:
    """``--tta``: a known mode; factors (> 0) after ``scales`` and after it alone."""
    tta = getattr(cfg, "tta", None)
    if not tta:
        return
    mode, rest = tta[0], tta[1:]
    need(mode in TTA_MODES, f"--tta: unknown mode {mode!r}; choose one of {', '.join(TTA_MODES)}")
    if mode != "scales":
        need(not rest, f"--tta {mode} takes no values, got {' '.join(rest)} (only --tta scales S... does)")
        return
    need(bool(rest), "--tta scales needs at least one factor of the input size, e.g. --tta scales 0.875 1 1.125")
    for value in rest:
        try:
            ok = float(value) > 0
        except ValueError:
            ok = False
        need(ok, f"--tta scales: {value!r} is not a factor > 0 (e.g. --tta scales 0.875 1 1.125)")


def _check_evaluation(cfg: argparse.Namespace) -> None:
    check_tta(cfg)
    if cfg.out is not None and not getattr(cfg, "average", None):  # --average writes a .pth there
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


def _add_knn(g: argparse._ArgumentGroup) -> None:
    g.add_argument("--knn", type=int, default=None, metavar="K",
                   help="also score a k-nearest-neighbour classifier on the embeddings (the classifier head's "
                        "input): cosine similarity to the train split's, the K nearest vote (single-label models); "
                        "its top-1 is reported beside the linear head's")
    g.add_argument("--knn_vote", choices=["weighted", "majority"], default="weighted",
                   help="--knn's vote: weighted (DINO's: each neighbour weighs exp(cosine similarity / 0.07)) or "
                        "majority (one vote each); ties go to the lower class index")


def _check_knn(cfg: argparse.Namespace) -> None:
    need(cfg.knn is None or cfg.knn >= 1, f"--knn K needs K >= 1 neighbours, got {cfg.knn}")
    need(cfg.knn is not None or cfg.knn_vote == "weighted", "--knn_vote is read only with --knn K: add that, or "
                                                            "drop --knn_vote")
    # refused here, before the evaluation runs (the split may fall back from test to val, never to train)
    need(cfg.knn is None or getattr(cfg, "eval_split", None) != "train",
         "--knn scores --eval_split val or test against the train split's embeddings; on the train split itself "
         "each image would be its own nearest neighbour: use --eval_split val or test")


KNN = FlagGroup("k-NN evaluation (--knn)", _add_knn, _check_knn, resume_safe=True)


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
         groups=(EVALUATION, UNKNOWN, TEST_SIZE, KNN), needs_checkpoint=True),
)
