"""``--extract_features``: the mode flag (it reads the shared flags only)."""
from __future__ import annotations

from config.base import Mode

MODES = (
    Mode("extract_features", "applications.features",
         lambda g: g.add_argument("--extract_features", choices=["train", "val", "test"], default=None,
                                  metavar="SPLIT",
                                  help="write each image's embedding (the classifier head's input) of this split "
                                       "to <run_dir>/features_<split>.npy, with its path and label in "
                                       "features_<split>.csv"),
         needs_checkpoint=True),
)
