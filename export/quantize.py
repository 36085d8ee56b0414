"""Static post-training int8 quantization of an ONNX export with ONNX Runtime's quantization tools.

QDQ format (QuantizeLinear/DequantizeLinear pairs that ONNX Runtime fuses into int8 kernels), int8
weights per output channel and int8 activations per tensor, whose ranges are calibrated on real images
(``minmax``: the observed range; ``entropy``: the range that keeps the histogram's KL divergence
smallest; ``percentile``: the 99.999th percentile of |x|). The model's outputs (the logits) stay float:
ONNX Runtime puts a QuantizeLinear/DequantizeLinear pair on every graph output, and one int8 scale for the
logits of all images is set by the images with the largest logits. On a model whose logits span hundreds
for a few images and a few units for most, that step (e.g. 4.6) is wider than most images' top-2 margin
(e.g. 0.8), so most images' logits round to one or two values and argmax picks among ties (a resnet18 after
one epoch lost 12 points, see docs/export_int8_openvino.md). :func:`keep_outputs_float` removes that pair,
so the last layer reads int8 inputs and writes float, as NNCF/OpenVINO does. The quantized file carries the
fp32 export's metadata plus the settings under ``quantization``, so the demo and any consumer preprocess
it the same way and can tell what it is.

The weights use 7 of int8's 8 bits (``reduce_range``). On x86 CPUs without VNNI (AVX2 only: many AMD EPYC and
older Intel servers) ONNX Runtime multiplies int8 pairs with ``vpmaddubsw``, whose 16-bit sums of two
products saturate at full-range weights: on such a CPU the full-range file of the hard model below agreed
with fp32 on 68.5% of the test images and lost 6.3 points, the 7-bit one 95.9% and gained 1.1
(``benchmarks/int8_onnx_variants.py``, seed 0). An exported file runs wherever it is deployed, so it is
written to be right on every x86 CPU; a VNNI or AVX-512 CPU gives up one bit of weight precision for it.
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
ORT_WEIGHTS = "int8 in a 7-bit range (reduce_range), symmetric, per output channel"


def calibration_batches(images: np.ndarray, batch_size: int = CALIB_BATCH) -> list[np.ndarray]:
    """``images`` (``N x 3 x H x W`` float32, preprocessed) cut into forward-pass batches."""
    return [np.ascontiguousarray(images[i:i + batch_size], dtype=np.float32)
            for i in range(0, len(images), batch_size)]


def quantization_settings(method: str, images: int, split: str, tool: str,
                          weights: str = "int8, symmetric, per output channel") -> dict[str, Any]:
    """The settings recorded in a quantized export's metadata (``quantization``)."""
    return {"precision": "int8", "tool": tool, "weights": weights,
            "activations": "int8, per tensor", "outputs": "float", "calib_method": method,
            "calib_images": int(images), "calib_split": split, "calib_preprocessing": "evaluation"}


def keep_outputs_float(model: Any) -> list[str]:
    """Remove the QuantizeLinear -> DequantizeLinear pair in front of each output of the QDQ ``model``
    (an ``onnx.ModelProto``, changed in place): the node before it then writes the output in float (ONNX
    Runtime runs a Gemm with int8 inputs and a float output as one int8 kernel). Returns the outputs
    changed; an output whose float tensor is also read elsewhere is left as it is."""
    graph = model.graph
    producer = {name: node for node in graph.node for name in node.output}
    readers: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            readers[name] = readers.get(name, 0) + 1
    boundary = {t.name for t in graph.input} | {t.name for t in graph.output}
    changed = []
    for output in graph.output:
        dq = producer.get(output.name)
        q = producer.get(dq.input[0]) if dq is not None and dq.op_type == "DequantizeLinear" else None
        if q is None or q.op_type != "QuantizeLinear" or readers[q.output[0]] != 1:
            continue
        source = producer.get(q.input[0])
        if source is None or readers[q.input[0]] != 1 or q.input[0] in boundary:
            logger.warning("the int8 output %s stays quantized: its float tensor is read elsewhere", output.name)
            continue
        source.output[list(source.output).index(q.input[0])] = output.name
        graph.node.remove(q)
        graph.node.remove(dq)
        changed.append(output.name)
    used = {name for node in graph.node for name in node.input}
    for initializer in [t for t in graph.initializer if t.name not in used]:  # the pairs' scales and zero points
        graph.initializer.remove(initializer)
    names = {name for node in graph.node for name in node.output} | boundary
    for info in [v for v in graph.value_info if v.name not in names]:
        graph.value_info.remove(info)
    return changed


def write_qdq(fp32_path: str | Path, out_path: str | Path, images: np.ndarray, method: str,
              float_outputs: bool = True, **options: Any) -> Path:
    """Write the int8 QDQ model of ``fp32_path`` to ``out_path`` (no metadata), calibrated on ``images`` with
    ``method``: ``quant_pre_process``, then ``quantize_static`` with int8 weights per output channel and int8
    activations; with ``float_outputs`` the outputs stay float (:func:`keep_outputs_float`). ``options``
    override ``quantize_static``'s arguments (``benchmarks/int8_onnx_variants.py`` compares them)."""
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
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
    with temp_dir(out_path) as tmp:  # in the export folder, named so that a rerun removes it after a kill
        # Shape inference and graph simplification first, as ONNX Runtime recommends for quantization.
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=True)
        settings = {"quant_format": QuantFormat.QDQ, "per_channel": True, "activation_type": QuantType.QInt8,
                    "weight_type": QuantType.QInt8, "reduce_range": True, "calibrate_method": calibrate, **options}
        quantize_static(str(prepared), str(out_path), Reader(), **settings)
    if float_outputs:
        model = onnx.load(str(out_path))
        keep_outputs_float(model)
        onnx.save(model, str(out_path))
    return out_path


def quantize_onnx(fp32_path: str | Path, out_path: str | Path, images: np.ndarray, method: str,
                  metadata: Mapping[str, Any], split: str = "train") -> dict[str, Any]:
    """Write the int8 QDQ model of ``fp32_path`` (:func:`write_qdq`, outputs float) to ``out_path``,
    calibrated on ``images`` with ``method``; it carries ``metadata`` plus the quantization settings.
    Returns the settings."""
    import onnxruntime
    out_path = Path(out_path)
    settings = quantization_settings(method, len(images), split, f"onnxruntime {onnxruntime.__version__} "
                                     f"quantize_static, QDQ", weights=ORT_WEIGHTS)
    with temp_dir(out_path) as tmp:  # in the export folder, named so that a rerun removes it after a kill
        written = write_qdq(fp32_path, Path(tmp) / "int8.onnx", images, method)
        set_onnx_metadata(written, {**metadata, "quantization": settings})
        write_bytes_atomic(out_path, written.read_bytes())
    logger.info("quantized %s to int8 (%s calibration on %d %s images) -> %s", fp32_path, method, len(images),
                split, out_path)
    return settings
