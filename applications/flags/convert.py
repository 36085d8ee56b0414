"""``--jit`` and ``--onnx`` (``applications/convert.py``): their flags."""
from __future__ import annotations

import argparse

from . import FlagGroup, Mode


def _add_export(g: argparse._ArgumentGroup) -> None:
    g.add_argument("--opset", type=int, default=None,
                   help="ONNX opset (default: the newest the installed onnxruntime runs)")


EXPORT = FlagGroup("export", _add_export, resume_safe=True)

MODES = (
    Mode("jit", "applications.convert",
         lambda g: g.add_argument("--jit", action="store_true",
                                  help="export --resume as TorchScript to <run_dir>/export/model_jit.pt, verified "
                                       "against eager"),
         flags=("eval_split",), needs_checkpoint=True),
    Mode("onnx", "applications.convert",
         lambda g: g.add_argument("--onnx", action="store_true",
                                  help="export --resume as ONNX to <run_dir>/export/model.onnx, verified in ONNX "
                                       "Runtime"),
         groups=(EXPORT,), flags=("eval_split",), needs_checkpoint=True),
)
