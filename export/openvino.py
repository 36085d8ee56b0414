"""OpenVINO IR exports (``model.xml`` + ``model.bin``): fp32 from the ONNX export with OpenVINO's
converter, int8 with NNCF's post-training quantization on the same calibration images as the ONNX
Runtime path (``export.quantize``).

The metadata (class names, input size, resize, mean/std, head, and for int8 the quantization settings)
travels in the IR's ``rt_info`` as one JSON string under ``classifier/metadata``. Weights are saved in
fp32 (OpenVINO's ``save_model`` compresses them to fp16 by default) and the fp32 IR is compiled with
the ``f32`` inference precision hint: on CPUs with bf16 units OpenVINO would otherwise compute in bf16.
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from .core import Runner
from .quantize import calibration_batches, quantization_settings

logger = logging.getLogger(__name__)

METADATA_KEY = ["classifier", "metadata"]
# max |logit difference| of an fp32 IR from eager: OpenVINO's CPU kernels accumulate fp32 in their own order,
# so the difference grows with the logits' scale (1.1e-4 at max |logit| 137 on a trained resnet18: 8e-7
# relative), past export.core.ATOL, which ONNX Runtime and TorchScript meet
OPENVINO_ATOL = 1e-3
# --calib_method -> NNCF's activation range estimator (NNCF has no KL-divergence/entropy estimator)
NNCF_RANGES = {"minmax": "MINMAX", "percentile": "MEAN_QUANTILE"}


def ir_files(xml: str | Path) -> list[Path]:
    """The two files of the IR whose graph is ``xml``: the graph and its weights (same stem, ``.bin``)."""
    xml = Path(xml)
    return [xml, xml.with_suffix(".bin")]


def move_ir(src: str | Path, dst: str | Path) -> None:
    """Rename the IR ``src`` (both files) to ``dst``."""
    for a, b in zip(ir_files(src), ir_files(dst)):
        os.replace(a, b)


def remove_ir(xml: str | Path) -> None:
    for f in ir_files(xml):
        f.unlink(missing_ok=True)


def save_ir(model: Any, path: str | Path, metadata: Mapping[str, Any]) -> Path:
    """Write the OpenVINO ``model`` with ``metadata`` in its rt_info, weights kept in fp32."""
    import openvino as ov
    model.set_rt_info(json.dumps(dict(metadata)), METADATA_KEY)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    ov.save_model(model, str(path), compress_to_fp16=False)
    return Path(path)


def read_ir_metadata(model: Any) -> dict[str, Any]:
    """The metadata a loaded OpenVINO model carries (empty when it has none)."""
    return json.loads(model.get_rt_info(METADATA_KEY).astype(str)) if model.has_rt_info(METADATA_KEY) else {}


def onnx_to_ir(onnx_path: str | Path, xml_path: str | Path, metadata: Mapping[str, Any]) -> Path:
    """Convert the ONNX export at ``onnx_path`` to an fp32 IR at ``xml_path`` (dynamic batch kept)."""
    import openvino as ov
    return save_ir(ov.convert_model(str(onnx_path)), xml_path, metadata)


def compile_ir(path: str | Path, threads: int | None = None, latency: bool = True):
    """The IR at ``path`` compiled for the CPU in fp32 arithmetic (int8 layers stay int8)."""
    import openvino as ov
    config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": "f32"}
    if latency:
        config["PERFORMANCE_HINT"] = "LATENCY"
    if threads:
        config["INFERENCE_NUM_THREADS"] = int(threads)
    return ov.Core().compile_model(str(path), "CPU", config)


def openvino_runner(path: str | Path, threads: int | None = None) -> Runner:
    """``batch -> logits`` through the OpenVINO IR at ``path`` on the CPU."""
    compiled = compile_ir(path, threads)
    request = compiled.create_infer_request()

    def run(x: torch.Tensor) -> torch.Tensor:
        request.infer({0: x.detach().cpu().numpy()})
        return torch.from_numpy(request.get_output_tensor(0).data.copy())
    return run


def quantize_ir(fp32_xml: str | Path, out_xml: str | Path, images: np.ndarray, method: str,
                metadata: Mapping[str, Any], split: str = "train") -> dict[str, Any]:
    """Write the int8 IR of ``fp32_xml`` to ``out_xml`` with NNCF post-training quantization calibrated
    on ``images``; it carries ``metadata`` plus the quantization settings. Returns the settings."""
    import nncf
    import openvino as ov
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters
    from nncf.quantization.range_estimator import RangeEstimatorParametersSet
    if method not in NNCF_RANGES:
        raise ValueError(f"--calib_method {method} is not available for OpenVINO (NNCF estimates ranges by "
                         f"{' or '.join(NNCF_RANGES)}); use one of those")
    batches = calibration_batches(images)
    ranges = getattr(RangeEstimatorParametersSet, NNCF_RANGES[method])
    quantized = nncf.quantize(ov.Core().read_model(str(fp32_xml)), nncf.Dataset(batches),
                              preset=nncf.QuantizationPreset.PERFORMANCE, subset_size=len(batches),
                              advanced_parameters=AdvancedQuantizationParameters(
                                  activations_range_estimator_params=ranges))
    settings = quantization_settings(method, len(images), split, f"nncf {nncf.__version__} quantize "
                                     f"(OpenVINO {ov.get_version().split('-')[0]})")
    save_ir(quantized, out_xml, {**metadata, "quantization": settings})
    logger.info("quantized %s to int8 with NNCF (%s ranges on %d %s images) -> %s", fp32_xml, method, len(images),
                split, out_xml)
    return settings
