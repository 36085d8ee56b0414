"""``--visual_data`` and ``--visual_source`` (``applications/visualize.py``): their flags and checks."""
from __future__ import annotations

import argparse
from pathlib import Path

from config.base import FlagGroup, Mode, need


def _add_explain(g: argparse._ArgumentGroup) -> None:
    g.add_argument("--visual_method", choices=["cam", "grad-cam", "grad-cam++", "score-cam", "xgrad-cam", "eigen-cam",
                                               "layer-cam"], default="grad-cam",
                   help="heatmap method for --visual_data")
    g.add_argument("--visual_class", type=str, default=None,
                   help="explain this class (a name) instead of the predicted one")
    g.add_argument("--visual_limit", type=int, default=None, help="at most this many images for --visual_data")
    g.add_argument("--target_layer", type=str, default=None,
                   help="dotted module name of the layer to explain (default: the family's last conv stage with maps "
                        "of at least 4 x 4)")


def _check_explain(cfg: argparse.Namespace) -> None:
    need(cfg.visual_limit is None or cfg.visual_limit >= 1, f"--visual_limit must be >= 1, got {cfg.visual_limit}")


def _source_files(cfg: argparse.Namespace, given: set[str]) -> None:
    hub = "dataset" in given and cfg.dataset == "hf"  # a Hub dataset in the datasets cache, as --predict reads it
    need(Path(cfg.visual_source).exists() or hub, f"--visual_source: {cfg.visual_source!r} does not exist")


EXPLAIN = FlagGroup("explain", _add_explain, _check_explain, resume_safe=True)

MODES = (
    Mode("visual_data", "applications.visualize",
         lambda g: g.add_argument("--visual_data", choices=["train", "val", "test"], default=None,
                                  help="explain --resume's predictions on this split with --visual_method heatmaps"),
         groups=(EXPLAIN,), needs_checkpoint=True),
    Mode("visual_source", "applications.visualize",
         lambda g: g.add_argument("--visual_source", type=str, default=None, metavar="PATH",
                                  help="like --visual_data, for an image, a folder of images (recursive), a .txt "
                                       "list of image paths, or every row of a Hugging Face dataset (as --predict)"),
         groups=(EXPLAIN,), needs_checkpoint=True, check_files=_source_files),
)
