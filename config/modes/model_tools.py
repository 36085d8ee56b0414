"""``--flops``, ``--throughput``, ``--summary`` and ``--publish`` (``applications/model_tools.py``)."""
from __future__ import annotations

import argparse

from config.base import Mode, need_file


def _publish_files(cfg: argparse.Namespace, given: set[str]) -> None:
    need_file(cfg.publish[0], "publish", what="checkpoint")


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
                                  help="strip training state from CKPT and write OUT-<sha256[:8]>.pth"),
         check_files=_publish_files),
)
