"""Whether a ``--pretrained`` value names weights (``imagenet``, ``IMAGENET1K_V2``, a timm tag) or a file.

Pure (no torch): the config check and the model factory must agree on it.
"""
from __future__ import annotations

import os
from pathlib import Path

WEIGHTS_DEFAULT = "imagenet"
WEIGHT_FILE_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors", ".tar", ".ckpt", ".pkl")


def is_weights_name(spec: str | None) -> bool:
    """True for a weights name; False for None, an existing path, or anything that looks like a path
    (a separator or a weights-file suffix), which ``--pretrained`` then reads as a local file."""
    if not spec or Path(spec).exists():
        return False
    return not (os.sep in spec or "/" in spec or spec.lower().endswith(WEIGHT_FILE_SUFFIXES))


def teacher_is_file(spec: str) -> bool:
    """Whether ``--teacher`` names a checkpoint file (an existing path, or a weights-file suffix) rather than a
    model ``ARCH[:WEIGHTS]`` (``resnet50``, ``timm/resnet18:a1_in1k``)."""
    return Path(spec).exists() or spec.lower().endswith(WEIGHT_FILE_SUFFIXES)
