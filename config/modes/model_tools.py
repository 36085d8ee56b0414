"""``--flops``, ``--throughput``, ``--summary``, ``--publish`` and ``--package`` (``applications/model_tools.py``)."""
from __future__ import annotations

import argparse
import re
from typing import Callable

from config.base import FlagGroup, Mode, need, need_file

# A Hub repo id as huggingface_hub accepts it: NAME (the token's own namespace) or OWNER/NAME
HUB_REPO = re.compile(r"^(?:[A-Za-z0-9][\w.-]{0,95}/)?[A-Za-z0-9][\w.-]{0,95}$")


def _checkpoint_first(mode: str) -> Callable[[argparse.Namespace, set[str]], None]:
    """The file check of a mode whose flag's first value is a checkpoint (``--publish CKPT OUT``, ``--package
    CKPT DIR``)."""
    def check(cfg: argparse.Namespace, given: set[str]) -> None:
        need_file(getattr(cfg, mode)[0], mode, what="checkpoint")
    return check


def _add_package(g: argparse._ArgumentGroup) -> None:
    g.add_argument("--push_to_hub", type=str, default=None, metavar="REPO",
                   help="with --package: upload the folder to the Hugging Face Hub repo REPO (OWNER/NAME, created "
                        "when missing) with huggingface_hub; the token as it reads it (HF_TOKEN, hf auth login)")


def _check_package(cfg: argparse.Namespace) -> None:
    need(cfg.push_to_hub is None or bool(HUB_REPO.match(cfg.push_to_hub)),
         f"--push_to_hub {cfg.push_to_hub!r} is not a Hub repo id: give OWNER/NAME (letters, digits, '-', '_', '.')")


PACKAGE = FlagGroup("package (--package)", _add_package, check=_check_package, resume_safe=True)

MODES = (
    Mode("flops", "applications.model_tools",
         lambda g: g.add_argument("--flops", action="store_true",
                                  help="parameters and FLOPs of --arch at --image_size, per module")),
    Mode("throughput", "applications.model_tools",
         lambda g: g.add_argument("--throughput", action="store_true",
                                  help="inference and training images/s at -b on the current device (eager, "
                                       "channels_last, compile, amp)"),
         flags=("channels_last", "compile")),
    Mode("summary", "applications.model_tools",
         lambda g: g.add_argument("--summary", action="store_true",
                                  help="layer table: name, type, output shape, parameters")),
    Mode("publish", "applications.model_tools",
         lambda g: g.add_argument("--publish", type=str, nargs=2, default=None, metavar=("CKPT", "OUT"),
                                  help="strip training state from CKPT and write OUT-<sha256[:8]>.pth "
                                       "(OUT ending in .safetensors: the weights as safetensors, the class names, "
                                       "spec and config in its metadata)"),
         check_files=_checkpoint_first("publish")),
    Mode("package", "applications.model_tools",
         lambda g: g.add_argument("--package", type=str, nargs=2, default=None, metavar=("CKPT", "DIR"),
                                  help="write DIR: model.safetensors, config.json (timm's pretrained_cfg form: "
                                       "timm.create_model('local-dir:DIR', pretrained=True) where timm builds the "
                                       "model) and a README.md model card; --pretrained local-dir:DIR or "
                                       "hf-hub:REPO fine-tunes from it"),
         groups=(PACKAGE,), check_files=_checkpoint_first("package")),
)
