"""``--jit``, ``--onnx``, ``--openvino`` and ``--triton`` (``applications/convert.py``): their flags, int8 and fp16
included."""
from __future__ import annotations

import argparse
import re

from config.base import FlagGroup, Mode, need


def _add_export(g: argparse._ArgumentGroup) -> None:
    g.add_argument("--opset", type=int, default=None,
                   help="ONNX opset (default: the newest the installed onnxruntime runs)")
    g.add_argument("--half", action="store_true",
                   help="an fp16 ONNX file for GPU runtimes: model.fp16.onnx (weights and activations float16, "
                        "input and output float32), verified in ONNX Runtime within the fp16 tolerance")


EXPORT = FlagGroup("export", _add_export, resume_safe=True)


def _add_triton(g: argparse._ArgumentGroup) -> None:
    g.add_argument("--triton_name", type=str, default=None,
                   help="the model's name in the Triton repository (default: the architecture, e.g. resnet18)")
    g.add_argument("--triton_max_batch", type=int, default=32,
                   help="Triton max_batch_size: the largest batch its dynamic batcher forms (preferred sizes: "
                        "half of it and it)")


def _check_triton(cfg: argparse.Namespace) -> None:
    need(cfg.triton_max_batch >= 1, f"--triton_max_batch must be >= 1, got {cfg.triton_max_batch}")
    name = cfg.triton_name
    need(name is None or bool(re.fullmatch(r"[A-Za-z0-9_.-]+", name)) and name not in (".", ".."),
         f"--triton_name {name!r} is a folder name in the model repository: use letters, digits, '_', '-' and '.'")


TRITON = FlagGroup("Triton model repository (--triton)", _add_triton, check=_check_triton, resume_safe=True)


# The flags that only --quantize int8 reads, and their defaults: set to anything else without it, they are
# refused rather than ignored.
INT8_DEFAULTS = {"calib_images": 256, "calib_method": "minmax", "verify_images": None, "max_accuracy_drop": 1.0}


def _add_quantize(g: argparse._ArgumentGroup) -> None:
    g.add_argument("--quantize", choices=["none", "int8"], default="none",
                   help="int8: also write model.int8.onnx (ONNX Runtime static QDQ) or model.int8.xml (NNCF), "
                        "calibrated on training images and kept only if it passes the accuracy guard")
    g.add_argument("--calib_images", type=int, default=INT8_DEFAULTS["calib_images"],
                   help="training images (spread over the split, evaluation preprocessing) that calibrate int8 ranges")
    g.add_argument("--calib_method", choices=["minmax", "entropy", "percentile"], default=INT8_DEFAULTS["calib_method"],
                   help="how activation ranges are calibrated (OpenVINO/NNCF: minmax or percentile)")
    g.add_argument("--verify_images", type=int, default=INT8_DEFAULTS["verify_images"],
                   help="accuracy guard: images spread over --eval_split (default: all of it)")
    g.add_argument("--max_accuracy_drop", type=float, default=INT8_DEFAULTS["max_accuracy_drop"],
                   help="accuracy guard: most top-1 points (mAP points for a multi-label model) the int8 file "
                        "may lose to fp32, else the export fails")


def _check_quantize(cfg: argparse.Namespace) -> None:
    need(cfg.calib_images >= 1, f"--calib_images must be >= 1, got {cfg.calib_images}")
    need(cfg.verify_images is None or cfg.verify_images >= 1, f"--verify_images must be >= 1, got {cfg.verify_images}")
    need(cfg.max_accuracy_drop >= 0, f"--max_accuracy_drop must be >= 0 points, got {cfg.max_accuracy_drop}")


def _check_int8_flags(cfg: argparse.Namespace) -> None:
    """The int8 flags of an export without ``--quantize int8`` are refused (they were ignored silently)."""
    if cfg.quantize != "int8":
        unread = [f"--{key}" for key, default in INT8_DEFAULTS.items() if getattr(cfg, key) != default]
        one = len(unread) == 1
        need(not unread, f"{', '.join(unread)} {'is an' if one else 'are'} int8 option{'' if one else 's'}, "
                         f"read only with --quantize int8: add that, or drop {'it' if one else 'them'}")


def _check_onnx(cfg: argparse.Namespace) -> None:
    _check_int8_flags(cfg)
    need(not (cfg.half and cfg.quantize == "int8"), "--half with --quantize int8: the int8 file is made from the "
                                                    "fp32 one; export one of the two")
    need(not cfg.tta or cfg.tta == ["hflip"], f"--onnx folds only --tta hflip into the graph, got --tta "
                                              f"{' '.join(cfg.tta or [])}: export without it, or with --tta hflip")
    need(not cfg.tta or cfg.quantize != "int8", "--tta hflip with --quantize int8: the int8 file would not fold the "
                                                "flip; export one of the two")


def _check_openvino(cfg: argparse.Namespace) -> None:
    _check_int8_flags(cfg)
    if cfg.quantize == "int8":
        need(cfg.calib_method != "entropy", "--calib_method entropy is ONNX Runtime's; OpenVINO (NNCF) calibrates "
                                            "with minmax or percentile: pick one of those, or export with --onnx")


QUANTIZE = FlagGroup("int8 export (--onnx / --openvino)", _add_quantize, check=_check_quantize, resume_safe=True)

MODES = (
    Mode("jit", "applications.convert",
         lambda g: g.add_argument("--jit", action="store_true",
                                  help="export --resume as TorchScript to <run_dir>/export/model_jit.pt, verified "
                                       "against eager"),
         flags=("eval_split", "use_test_size"), needs_checkpoint=True),
    Mode("onnx", "applications.convert",
         lambda g: g.add_argument("--onnx", action="store_true",
                                  help="export --resume as ONNX to <run_dir>/export/model.onnx, verified in ONNX "
                                       "Runtime"),
         groups=(EXPORT, QUANTIZE), flags=("eval_split", "tta", "use_test_size"), needs_checkpoint=True,
         check=_check_onnx),
    Mode("openvino", "applications.convert",
         lambda g: g.add_argument("--openvino", action="store_true",
                                  help="export --resume as OpenVINO IR to <run_dir>/export/model.xml + .bin, "
                                       "verified in OpenVINO"),
         groups=(QUANTIZE,), flags=("eval_split", "use_test_size"), needs_checkpoint=True, check=_check_openvino),
    Mode("triton", "applications.convert",
         lambda g: g.add_argument("--triton", action="store_true",
                                  help="export --resume as a Triton Inference Server model repository in "
                                       "<run_dir>/export/triton/ (config.pbtxt, 1/model.onnx, labels.txt), the "
                                       "ONNX file verified in ONNX Runtime"),
         groups=(EXPORT, TRITON), flags=("eval_split", "use_test_size"), needs_checkpoint=True),
)
