"""applications/convert.py and export/core.py: TorchScript and ONNX exports, loaded back in a fresh process.

Checkpoints are built in train.py's format from random weights whose batch-norm statistics are
re-estimated on the training images: logits then have a trained network's scale and differ from image
to image, without the time of a training run.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from export.core import ExportError, choose_opset, onnxruntime_max_opset, torch_onnx_max_opset
from models import create_model


def test_efficientnet_is_built_with_the_swish_that_export_switches_off():
    from efficientnet_pytorch.utils import MemoryEfficientSwish
    assert isinstance(create_model("efficientnet-b0", 3)._swish, MemoryEfficientSwish)


def test_opset_is_the_newest_both_sides_support_and_others_are_refused():
    best = min(torch_onnx_max_opset(), onnxruntime_max_opset())
    assert choose_opset() == best and choose_opset(13) == 13
    assert onnxruntime_max_opset() >= 17
    with pytest.raises(ExportError, match=f"use --opset 7..{best}"):
        choose_opset(best + 1)


def _linear(scale: float) -> nn.Linear:
    layer = torch.nn.Linear(2, 3, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[10.0, 0.0], [0.0, -20.0], [1.0, 1.0]]) * scale)
    return layer.eval()


def test_the_logit_bound_is_rtol_times_the_logits_scale_with_a_floor_of_one():
    from export.core import RTOL, logit_bound
    assert RTOL == 1e-3
    assert logit_bound(20.0) == pytest.approx(2e-2)  # 1e-3 x 20
    assert logit_bound(250.0) == pytest.approx(0.25)
    assert logit_bound(0.2) == pytest.approx(1e-3) and logit_bound(0.0) == pytest.approx(1e-3)  # the floor: 1e-3 x 1
    assert logit_bound(20.0, rtol=1e-4) == pytest.approx(2e-3)
    # a model whose own fp32 logits are further from float64 than that: 20x eager's error, the larger term
    assert logit_bound(20.0, eager_float64_error=1e-2) == pytest.approx(0.2)
    assert logit_bound(20.0, eager_float64_error=1e-4) == pytest.approx(2e-2)


def test_verify_export_holds_an_export_to_the_bound_of_the_eager_logits():
    """By hand: logits of [[1, 0.5], [0.2, 1]] through rows (10, 0), (0, -20), (1, 1) are [10, -10, 1.5] and
    [2, -20, 1.2]: max |logit| 20, bound 1e-3 x 20 = 0.02. At 1/100 of the weights the logits reach 0.2 and
    the floor holds: 1e-3."""
    from export.core import verify_export
    images = torch.tensor([[1.0, 0.5], [0.2, 1.0]])
    model = _linear(1.0)

    def off_by(delta: float, m=model):
        return lambda x: m(x).detach() + delta

    report = verify_export("the close export", model, off_by(0.015), images)
    assert report["max_abs_logit"] == pytest.approx(20.0) and report["bound"] == pytest.approx(0.02)
    assert report["max_abs_diff"] == pytest.approx(0.015, rel=1e-3)
    assert report["bound_from"] == "0.001 x max(1, max |logit| 20)"
    with pytest.raises(ExportError, match=r"^the far export does not reproduce the eager model: max \|logit "
                                          r"difference\| 0.03 > 0.02 on 2 real images \(the bound: the larger of "
                                          r"0.001 x max\(1, max \|logit\| 20\) and 20 x the eager model's distance "
                                          r"from float64 logits\); it is 0.03 from exact \(float64\) logits, the eager "
                                          r"model [0-9.e+-]+$"):
        verify_export("the far export", model, off_by(0.03), images)
    assert verify_export("a looser runtime", model, off_by(0.03), images, rtol=1e-2)["bound"] == pytest.approx(0.2)
    small = _linear(0.01)
    assert verify_export("the small close export", small, off_by(5e-4, small), images)["bound"] == pytest.approx(1e-3)
    with pytest.raises(ExportError, match=r"max \|logit difference\| 0.002 > 0.001 on 2 real images \(the bound: the "
                                          r"larger of 0.001 x max\(1, max \|logit\| 0.2\) and "):
        verify_export("the small far export", small, off_by(2e-3, small), images)


class _Cancelling(nn.Module):
    """Logits ``[(a + b) - a, c]`` of inputs ``[a, b, c]``: with a = 1e8 and b = 1, fp32 rounds a + b to 1e8
    (its spacing there is 8), so the first logit is 0 in fp32 and 1 in float64."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([(x[:, :1] + x[:, 1:2]) - x[:, :1], x[:, 2:3]], 1)


def test_verify_export_allows_a_model_as_inexact_as_its_own_fp32_logits_twenty_times_that():
    """By hand: eager logits [0, 3] and [0, -2], float64 [1, 3] and [1, -2]: eager is 1 from float64, so the
    bound is max(1e-3 x max(1, 3), 20 x 1) = 20; an export 5 off passes (with a warning), 30 off fails."""
    from export.core import verify_export
    images = torch.tensor([[1e8, 1.0, 3.0], [1e8, 1.0, -2.0]])
    model = _Cancelling()
    report = verify_export("the close export", model, lambda x: model(x) + 5.0, images)
    assert report["eager_float64_error"] == pytest.approx(1.0) and report["bound"] == pytest.approx(20.0)
    assert report["bound_from"] == ("the larger of 0.001 x max(1, max |logit| 3) and 20 x the eager model's "
                                    "distance from float64 logits")
    with pytest.raises(ExportError, match=r"max \|logit difference\| 30 > 20 on 2 real images \(the bound: the larger "
                                          r"of 0.001 x max\(1, max \|logit\| 3\) and 20 x the eager model's distance "
                                          r"from float64 logits\); it is 3[01] from exact \(float64\) logits, the "
                                          r"eager model 1$"):
        verify_export("the far export", model, lambda x: model(x) + 30.0, images)
