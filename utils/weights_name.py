"""Whether a ``--pretrained`` value names weights (``imagenet``, ``IMAGENET1K_V2``, a timm tag, a package:
``hf-hub:REPO`` or ``local-dir:DIR``) or a file.

Pure (no torch): the config check and the model factory must agree on it.
"""
from __future__ import annotations

import os
from pathlib import Path

WEIGHTS_DEFAULT = "imagenet"
WEIGHT_FILE_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors", ".tar", ".ckpt", ".pkl")
# timm's model sources: a package (``--package``'s folder) on the Hugging Face Hub or in a local folder
PACKAGE_SOURCES = ("hf-hub:", "local-dir:")


def is_package_ref(spec: str | None) -> bool:
    """``hf-hub:REPO`` or ``local-dir:DIR``: a package's weights and preprocessing, named as timm names them."""
    return bool(spec) and str(spec).startswith(PACKAGE_SOURCES)


def is_weights_name(spec: str | None) -> bool:
    """True for a weights name (a package reference included); False for None, an existing path, or anything
    that looks like a path (a separator or a weights-file suffix), which ``--pretrained`` then reads as a file."""
    if is_package_ref(spec):
        return True
    if not spec or Path(spec).exists():
        return False
    return not (os.sep in spec or "/" in spec or spec.lower().endswith(WEIGHT_FILE_SUFFIXES))


def teacher_is_file(spec: str) -> bool:
    """Whether ``--teacher`` names a checkpoint file (an existing path, or a weights-file suffix) rather than a
    model ``ARCH[:WEIGHTS]`` (``resnet50``, ``timm/resnet18:a1_in1k``)."""
    return Path(spec).exists() or spec.lower().endswith(WEIGHT_FILE_SUFFIXES)
