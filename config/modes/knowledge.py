"""``--knowledge``: the mode flag (it reads the shared flags only)."""
from __future__ import annotations

from config.base import Mode

MODES = (
    Mode("knowledge", "applications.knowledge",
         lambda g: g.add_argument("--knowledge", choices=["train", "val", "test"], default=None,
                                  help="run the teacher --resume over this split and write DATA/distill_<arch>.txt "
                                       "and DATA/label.txt"),
         needs_checkpoint=True),
)
