"""OpenVINO IR exports (``model.xml`` + ``model.bin``): fp32 from the ONNX export with OpenVINO's
converter, int8 with NNCF's post-training quantization on the same calibration images as the ONNX
Runtime path (``export.quantize``).

The metadata (class names, input size, resize, mean/std, head, and for int8 the quantization settings)
travels in the IR's ``rt_info`` as one JSON string under ``classifier/metadata``. Weights are saved in
fp32 (OpenVINO's ``save_model`` compresses them to fp16 by default) and the fp32 IR is compiled with
the ``f32`` inference precision hint: on CPUs with bf16 units OpenVINO would otherwise compute in bf16.

The two files are one unit: the ``.xml`` records the sha256 of its ``.bin`` in its rt_info
(``classifier/bin_sha256``), and every loader here (and ``demos/classifier.py``) refuses a pair whose
``.bin`` does not match, which is what a kill between the two renames of a re-export leaves (the new
``.xml`` is renamed first, so it is the one that knows).
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from utils.atomic import file_sha256

from .core import ExportError, Runner
from .quantize import calibration_batches, quantization_settings

logger = logging.getLogger(__name__)

METADATA_KEY = ["classifier", "metadata"]
WEIGHTS_HASH_KEY = ["classifier", "bin_sha256"]  # the sha256 (hex) of the .bin, in the .xml's rt_info
# --calib_method -> NNCF's activation range estimator (NNCF has no KL-divergence/entropy estimator)
NNCF_RANGES = {"minmax": "MINMAX", "percentile": "MEAN_QUANTILE"}


def ir_files(xml: str | Path) -> list[Path]:
    """The two files of the IR whose graph is ``xml``: the graph and its weights (same stem, ``.bin``)."""
    xml = Path(xml)
    return [xml, xml.with_suffix(".bin")]


def move_ir(src: str | Path, dst: str | Path) -> None:
    """Rename the IR ``src`` (both files) to ``dst``: the ``.xml`` first, so that a kill between the two
    renames leaves the new ``.xml``, whose recorded hash refuses the old ``.bin`` (see :func:`read_ir`)."""
    for a, b in zip(ir_files(src), ir_files(dst)):
        os.replace(a, b)


def remove_ir(xml: str | Path) -> None:
    for f in ir_files(xml):
        f.unlink(missing_ok=True)


def save_ir(model: Any, path: str | Path, metadata: Mapping[str, Any]) -> Path:
    """Write the OpenVINO ``model`` with ``metadata`` and its ``.bin``'s sha256 in its rt_info, weights kept
    in fp32. The hash is known once the ``.bin`` is written, so the pair is saved twice (the second ``.bin``
    is the same bytes; checked)."""
    import openvino as ov
    path = Path(path)
    model.set_rt_info(json.dumps(dict(metadata)), METADATA_KEY)
    path.parent.mkdir(parents=True, exist_ok=True)
    ov.save_model(model, str(path), compress_to_fp16=False)
    weights = ir_files(path)[1]
    model.set_rt_info(file_sha256(weights), WEIGHTS_HASH_KEY)
    ov.save_model(model, str(path), compress_to_fp16=False)
    check_weights(path, model)
    return path


def openvino_reason(e: BaseException) -> str:
    """OpenVINO's own reason in one of its multi-line errors (its last line; the first names its source file)."""
    lines = [line.strip() for line in str(e).strip().splitlines() if line.strip()]
    return lines[-1] if lines else type(e).__name__


def check_weights(xml: str | Path, model: Any) -> None:
    """Raise :class:`ExportError` when the ``.bin`` beside ``xml`` is not the one ``model`` (read from
    ``xml``) records; an IR without a recorded hash (not written here) is not checked."""
    if not model.has_rt_info(WEIGHTS_HASH_KEY):
        return
    xml, weights = ir_files(xml)
    expected, got = model.get_rt_info(WEIGHTS_HASH_KEY).astype(str), file_sha256(weights)
    if got != expected:
        raise ExportError(f"{weights} is not the weights file of {xml} (its sha256 is {got[:16]}..., the .xml "
                          f"records {expected[:16]}...): an export was interrupted between writing the two; "
                          f"export again (main.py --openvino --resume CHECKPOINT)")


def read_ir(xml: str | Path) -> Any:
    """The OpenVINO model of the IR at ``xml``, its ``.bin`` checked against the hash the ``.xml`` records;
    one-line :class:`ExportError` naming the files when OpenVINO cannot read them or they do not match."""
    import openvino as ov
    xml, weights = ir_files(xml)
    try:
        model = ov.Core().read_model(str(xml))
    except RuntimeError as e:
        raise ExportError(f"OpenVINO cannot read the IR {xml} with its weights {weights.name}: {openvino_reason(e)}; "
                          f"export it again (main.py --openvino --resume CHECKPOINT)") from e
    check_weights(xml, model)
    return model


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
    return ov.Core().compile_model(read_ir(path), "CPU", config)


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
    quantized = nncf.quantize(read_ir(fp32_xml), nncf.Dataset(batches),
                              preset=nncf.QuantizationPreset.PERFORMANCE, subset_size=len(batches),
                              advanced_parameters=AdvancedQuantizationParameters(
                                  activations_range_estimator_params=ranges))
    settings = quantization_settings(method, len(images), split, f"nncf {nncf.__version__} quantize "
                                     f"(OpenVINO {ov.get_version().split('-')[0]})")
    save_ir(quantized, out_xml, {**metadata, "quantization": settings})
    logger.info("quantized %s to int8 with NNCF (%s ranges on %d %s images) -> %s", fp32_xml, method, len(images),
                split, out_xml)
    return settings
