"""Static post-training int8 quantization of an ONNX export with ONNX Runtime's quantization tools.

QDQ format (QuantizeLinear/DequantizeLinear pairs that ONNX Runtime fuses into int8 kernels), int8
weights per output channel and int8 activations per tensor, whose ranges are calibrated on real images
(``minmax``: the observed range; ``entropy``: the range that keeps the histogram's KL divergence
smallest; ``percentile``: the 99.999th percentile of |x|). The quantized file carries the fp32
export's metadata plus the settings under ``quantization``, so the demo and any consumer preprocess it
the same way and can tell what it is.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from utils.atomic import temp_dir, write_bytes_atomic

from .core import INPUT_NAME, set_onnx_metadata

logger = logging.getLogger(__name__)

CALIB_METHODS = ("minmax", "entropy", "percentile")
CALIB_BATCH = 16  # images per calibration forward pass


def calibration_batches(images: np.ndarray, batch_size: int = CALIB_BATCH) -> list[np.ndarray]:
    """``images`` (``N x 3 x H x W`` float32, preprocessed) cut into forward-pass batches."""
    return [np.ascontiguousarray(images[i:i + batch_size], dtype=np.float32)
            for i in range(0, len(images), batch_size)]


def quantization_settings(method: str, images: int, split: str, tool: str) -> dict[str, Any]:
    """The settings recorded in a quantized export's metadata (``quantization``)."""
    return {"precision": "int8", "tool": tool, "weights": "int8, symmetric, per output channel",
            "activations": "int8, per tensor", "calib_method": method, "calib_images": int(images),
            "calib_split": split, "calib_preprocessing": "evaluation"}


def quantize_onnx(fp32_path: str | Path, out_path: str | Path, images: np.ndarray, method: str,
                  metadata: Mapping[str, Any], split: str = "train") -> dict[str, Any]:
    """Write the int8 QDQ model of ``fp32_path`` to ``out_path``, calibrated on ``images`` with ``method``;
    it carries ``metadata`` plus the quantization settings. Returns the settings."""
    import onnxruntime
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)
    from onnxruntime.quantization.shape_inference import quant_pre_process
    if method not in CALIB_METHODS:
        raise ValueError(f"unknown calibration method {method!r}; choose {', '.join(CALIB_METHODS)}")
    calibrate = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
                 "percentile": CalibrationMethod.Percentile}[method]

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter(calibration_batches(images))

        def get_next(self) -> dict[str, np.ndarray] | None:
            batch = next(self.batches, None)
            return None if batch is None else {INPUT_NAME: batch}

    out_path = Path(out_path)
    settings = quantization_settings(method, len(images), split, f"onnxruntime {onnxruntime.__version__} "
                                     f"quantize_static, QDQ")
    with temp_dir(out_path) as tmp:  # in the export folder, named so that a rerun removes it after a kill
        # Shape inference and graph simplification first, as ONNX Runtime recommends for quantization.
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=True)
        written = Path(tmp) / "int8.onnx"
        quantize_static(str(prepared), str(written), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QInt8, weight_type=QuantType.QInt8, calibrate_method=calibrate)
        set_onnx_metadata(written, {**metadata, "quantization": settings})
        write_bytes_atomic(out_path, written.read_bytes())
    logger.info("quantized %s to int8 (%s calibration on %d %s images) -> %s", fp32_path, method, len(images),
                split, out_path)
    return settings
