"""applications/convert.py and export/core.py: TorchScript and ONNX exports, loaded back in a fresh process.

Checkpoints are built in train.py's format from random weights whose batch-norm statistics are
re-estimated on the training images: logits then have a trained network's scale and differ from image
to image, without the time of a training run.
"""
from __future__ import annotations


import pytest

from models import create_model
from export.core import ExportError, choose_opset, onnxruntime_max_opset, torch_onnx_max_opset


def test_efficientnet_is_built_with_the_swish_that_export_switches_off():
    from efficientnet_pytorch.utils import MemoryEfficientSwish
    assert isinstance(create_model("efficientnet-b0", 3)._swish, MemoryEfficientSwish)


def test_opset_is_the_newest_both_sides_support_and_others_are_refused():
    best = min(torch_onnx_max_opset(), onnxruntime_max_opset())
    assert choose_opset() == best and choose_opset(13) == 13
    assert onnxruntime_max_opset() >= 17
    with pytest.raises(ExportError, match=f"use --opset 7..{best}"):
        choose_opset(best + 1)
