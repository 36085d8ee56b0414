"""``--calibrate`` (``applications/calibrate.py``): fit a checkpoint's softmax temperature on the val split."""
from __future__ import annotations

from config.base import Mode

MODES = (
    Mode("calibrate", "applications.calibrate",
         lambda g: g.add_argument("--calibrate", action="store_true",
                                  help="fit one softmax temperature of --resume on the val split of --data "
                                       "(LBFGS on the NLL) and write <checkpoint>_calibrated.pth beside it; "
                                       "every mode and the exports apply it"),
         needs_checkpoint=True),
)
