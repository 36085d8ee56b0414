"""export/quantize.py without training: the int8 ONNX file's outputs (the logits) stay float."""
from __future__ import annotations

import numpy as np
import onnx
import torch
import torch.nn as nn

from export.core import choose_opset, export_onnx, onnx_runner
from export.quantize import write_qdq


def test_logits_stay_float_so_images_with_small_logits_do_not_tie(tmp_path):
    """A few calibration images with logits in the hundreds set one int8 scale for every image's logits;
    with the logits quantized, most images' logits round to the same few values and their predictions
    change (ties); with them float (the default) the int8 file predicts as fp32 does."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 32, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10))
    with torch.no_grad():  # logits with a large common part and small gaps between classes, as after one epoch
        model[-1].weight.copy_(1 + 0.05 * torch.randn(10, 32))
        model[-1].bias.zero_()
    images = torch.rand(66, 3, 8, 8) * torch.rand(66, 3, 1, 1) * 2
    fp32 = export_onnx(model.eval(), images[:2], tmp_path / "model.onnx", {}, choose_opset())
    calibration = images.clone()
    calibration[:2] *= 20  # two images whose logits are 20 times the others'
    expected = onnx_runner(fp32)(images[2:]).argmax(1)

    def agreement(path):
        return float((onnx_runner(path)(images[2:]).argmax(1) == expected).float().mean())

    quantized = write_qdq(fp32, tmp_path / "int8.onnx", calibration.numpy(), "minmax")
    old = write_qdq(fp32, tmp_path / "int8_logits.onnx", calibration.numpy(), "minmax", float_outputs=False)
    graph = onnx.load(str(quantized)).graph
    producer = {name: node.op_type for node in graph.node for name in node.output}
    assert [producer[t.name] for t in graph.output] == ["Gemm"]
    assert sum(n.op_type == "QuantizeLinear" for n in graph.node) >= 2  # still int8 inside
    assert agreement(quantized) >= 0.9  # measured 0.98
    assert agreement(old) < 0.5  # what the settings before wrote (measured 0.17)
    assert np.isfinite(onnx_runner(quantized)(images).numpy()).all()
