"""explain/cam.py: every CAM method on one model of each family (resnest50 and efficientnet-b0 included,
the slowest CAM test)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from explain.cam import METHODS, explain
from helpers import hook_count
from models import create_model

slow = pytest.mark.slow


# Score-CAM runs the model once per channel of the layer: on the wide default layers of the big models
# (2048 and 1280 channels) that is minutes on a CPU, so it explains a narrower stage there.
SCORE_CAM_LAYER = {"resnest50": "layer1", "efficientnet-b0": "_blocks.0"}


@slow
@pytest.mark.parametrize("arch", ["resnet18", "efficientnet-b0", "resnest50", "timm/resnet18"])
def test_every_method_on_one_model_of_each_family(arch):
    torch.manual_seed(0)
    model = create_model(arch, 3).eval()
    images = torch.randn(1, 3, 64, 64)
    for method in METHODS:
        layer = SCORE_CAM_LAYER.get(arch) if method == "score-cam" else None
        result = explain(model, images, method, layer=layer, arch=arch)
        assert result.heatmaps.shape == (1, 64, 64) and np.isfinite(result.heatmaps).all(), method
        assert result.logits.shape == (1, 3), method
    assert hook_count(model) == 0
