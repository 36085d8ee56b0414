"""explain/cam.py and models/cam_layers.py: heatmaps find the evidence, CAM equals Grad-CAM on a GAP + linear
model, hooks never outlive a call, and every family has a default target layer."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn

from explain.cam import METHODS, CamExplainer, explain
from helpers import hook_count
from models import create_model, default_target_layer, resolve_target_layer

SIZE, PATCH = 32, 8
# class -> (colour channel, top-left corner of its quadrant): a bright patch of that colour somewhere in it
CLASSES = {0: (0, (0, 0)), 1: (1, (0, 16)), 2: (2, (16, 0))}


def bright_patch_images(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, list[tuple[int, int]]]:
    """Dark noisy images, each with one bright patch: its colour and quadrant decide the class; returns
    the images, labels and each patch's top-left corner."""
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(n, 3, SIZE, SIZE, generator=g) * 0.25
    labels = torch.arange(n) % len(CLASSES)
    corners = []
    for i, label in enumerate(labels.tolist()):
        channel, (qy, qx) = CLASSES[label]
        y, x = (qy + int(v) for v in torch.randint(0, 16 - PATCH + 1, (2,), generator=g))
        images[i, channel, y:y + PATCH, x:x + PATCH] = 1.0
        corners.append((y, x))
    return images, labels, corners


class TinyNet(nn.Module):
    """conv -> ReLU -> pool -> conv -> ReLU -> global average pooling -> linear: the shape CAM needs."""

    def __init__(self, classes: int = len(CLASSES)):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                                      nn.Conv2d(16, 32, 3, padding=1), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(32, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.features(x)).flatten(1))


@pytest.fixture(scope="module")
def patch_model() -> TinyNet:
    torch.manual_seed(0)
    model = TinyNet()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for step in range(80):
        images, labels, _ = bright_patch_images(32, seed=step)
        loss = nn.functional.cross_entropy(model(images), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


@pytest.mark.parametrize("method", list(METHODS))
def test_heatmap_peak_falls_inside_the_patch(patch_model, method):
    images, labels, corners = bright_patch_images(12, seed=1000)
    result = explain(patch_model, images, method)
    assert result.logits.argmax(1).tolist() == labels.tolist()  # the model separates the classes
    assert result.heatmaps.shape == (12, SIZE, SIZE) and result.heatmaps.dtype == np.float32
    assert 0.0 <= result.heatmaps.min() and result.heatmaps.max() <= 1.0
    for heatmap, (y, x) in zip(result.heatmaps, corners):
        py, px = np.unravel_index(np.argmax(heatmap), heatmap.shape)
        assert y <= py < y + PATCH and x <= px < x + PATCH, (method, (py, px), (y, x))
    assert hook_count(patch_model) == 0


def test_cam_equals_grad_cam_up_to_scale_for_gap_linear(patch_model):
    # d logit_c / d A_k(i, j) = w[c, k] / (h * w) everywhere, so Grad-CAM's weights are CAM's divided by h * w
    images, _, _ = bright_patch_images(6, seed=7)
    for target in (None, 2):
        cam = explain(patch_model, images, "cam", layer="features", classes=target)
        grad = explain(patch_model, images, "grad-cam", layer="features", classes=target)
        assert cam.classes == grad.classes
        assert np.allclose(cam.heatmaps, grad.heatmaps, atol=1e-4)
        assert torch.allclose(cam.logits, grad.logits, atol=1e-5)


def test_cam_equals_grad_cam_on_resnet18():
    torch.manual_seed(0)
    model = create_model("resnet18", 4).eval()
    images = torch.randn(3, 3, 64, 64)  # layer4 maps are 2 x 2
    cam = explain(model, images, "cam", classes=[0, 1, 3])
    grad = explain(model, images, "grad-cam", layer="layer4", classes=[0, 1, 3], arch="resnet18")
    assert cam.feature_size == (2, 2) == grad.feature_size
    assert np.allclose(cam.heatmaps, grad.heatmaps, atol=1e-4)
    assert cam.heatmaps.max(axis=(1, 2)).min() > 0.99  # real maps, not all zero


class Boom(nn.Module):
    """Identity until armed, then raises: an error in the middle of a forward pass."""
    armed = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.armed:
            raise RuntimeError("boom")
        return x


@pytest.mark.parametrize("method", ["cam", "grad-cam", "score-cam", "eigen-cam"])
def test_hooks_and_model_state_restored_also_on_error(method):
    torch.manual_seed(0)
    model = TinyNet()
    model.pool = nn.Sequential(Boom(), nn.AdaptiveAvgPool2d(1))
    model.train()
    grads = {n: torch.full_like(p, 0.5) for n, p in model.named_parameters()}
    for n, p in model.named_parameters():
        p.grad = grads[n].clone()
    model.features[0].weight.requires_grad_(False)
    images, _, _ = bright_patch_images(4, seed=3)

    explain(model, images, method, layer="features")
    model.pool[0].armed = True
    with pytest.raises(RuntimeError, match="boom"):
        explain(model, images, method, layer="features")
    with pytest.raises(RuntimeError, match="boom"):
        with CamExplainer(model, method, layer="features") as explainer:
            model.pool[0].armed = False
            explainer(images)  # hooks are live here
            assert hook_count(model) > 0
            model.pool[0].armed = True
            explainer(images)

    assert hook_count(model) == 0
    assert model.training
    assert not model.features[0].weight.requires_grad and model.fc.weight.requires_grad
    for n, p in model.named_parameters():
        assert torch.equal(p.grad, grads[n]), n  # gradients flow to the input only


def test_explainer_outside_with_block_is_an_error(patch_model):
    explainer = CamExplainer(patch_model, "grad-cam")
    with pytest.raises(RuntimeError, match="with block"):
        explainer(torch.zeros(1, 3, SIZE, SIZE))


def test_unknown_target_layer_lists_valid_names():
    model = create_model("resnet18", 3)
    with pytest.raises(ValueError) as e:
        resolve_target_layer(model, "layer5")
    message = str(e.value)
    assert "unknown --target_layer 'layer5'" in message and "Close matches: layer" in message
    assert "Valid names" in message and "layer4.1, avgpool, fc" in message
    assert resolve_target_layer(model, "layer4[1]") is model.layer4[1]
    with pytest.raises(ValueError, match="Close matches: layer4"):
        explain(model, torch.zeros(1, 3, 32, 32), "grad-cam", layer="layer_4")
    assert hook_count(model) == 0


@pytest.mark.parametrize("arch", ["squeezenet1_0", "mobilenet_v3_small"])
def test_cam_without_gap_linear_head_suggests_grad_cam(arch):
    model = create_model(arch, 3).eval()
    with pytest.raises(ValueError, match="global average pooling and one linear layer.*grad-cam"):
        explain(model, torch.randn(1, 3, 64, 64), "cam")
    assert hook_count(model) == 0


def test_cam_rejects_a_target_layer_that_is_not_pooled():
    model = create_model("resnet18", 3).eval()
    with pytest.raises(ValueError, match="pooled feature map is the output of 'layer4'.*grad-cam"):
        explain(model, torch.randn(1, 3, 64, 64), "cam", layer="layer3")


slow = pytest.mark.slow
FAMILY_DEFAULTS = [
    ("resnet18", "layer4"),
    ("mobilenet_v3_small", "features"),
    pytest.param("efficientnet_b0", "features", marks=slow),
    ("shufflenet_v2_x0_5", "conv5"),
    pytest.param("densenet121", "features", marks=slow),
    pytest.param("efficientnet-b0", "_bn1", marks=slow),
    pytest.param("resnest50", "layer4", marks=slow),
    ("timm/resnet18", "layer4"),
]


@pytest.mark.parametrize("arch, layer", FAMILY_DEFAULTS)
def test_each_family_has_a_default_target_layer(arch, layer):
    torch.manual_seed(0)
    model = create_model(arch, 3).eval()
    assert default_target_layer(model, arch) == layer
    result = explain(model, torch.randn(2, 3, 64, 64), "grad-cam++", arch=arch)
    assert result.heatmaps.shape == (2, 64, 64) and np.isfinite(result.heatmaps).all()
    assert result.feature_size == (2, 2)
    assert hook_count(model) == 0


@pytest.mark.parametrize("arch, size, layer", [
    ("resnet18", 224, "layer4"), ("resnet18", 32, "layer2"), ("resnet18", 16, "layer1"),
    ("mobilenet_v3_small", 32, "features.3"), ("shufflenet_v2_x0_5", 32, "stage2"), ("mnasnet0_5", 32, "layers.9"),
    ("regnet_x_400mf", 32, "trunk_output.block2"), ("timm/resnet18", 32, "layer2"),
    pytest.param("efficientnet-b0", 32, "_blocks.4", marks=slow),
])
def test_default_target_layer_is_the_last_stage_with_at_least_4x4_maps(arch, size, layer, caplog):
    """On 32 px inputs resnet18's layer4 is 1 x 1 and every heatmap was uniform: the default is now the last
    stage whose maps are at least 4 x 4 at the input size, and the log says so."""
    import logging
    torch.manual_seed(0)
    model = create_model(arch, 3).eval()
    with caplog.at_level(logging.INFO):
        with CamExplainer(model, "grad-cam", arch=arch, input_size=(size, size)) as explainer:
            result = explainer(torch.randn(2, 3, size, size))
    assert explainer.layer == layer
    assert min(result.feature_size) >= 4 and result.heatmaps.std() > 0.01  # a layout, not a uniform map
    assert (f"the family's last stage {default_target_layer(model, arch)!r} gives" in caplog.text) == (size < 224)
    assert hook_count(model) == 0 and not model.training


@pytest.mark.parametrize("classes", [None, [1, 0, 2, 1]])
def test_our_grad_cam_equals_the_grad_cam_package(classes):
    """``grad-cam`` is written out in explain/cam.py (the package import costs 2.5 s); it must give the
    package's GradCAM heatmaps on the same model, layer, images and classes."""
    import torchvision
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    from explain.cam import CamExplainer
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=3).eval()
    images = torch.randn(4, 3, 48, 40)
    with CamExplainer(model, "grad-cam", layer="layer3") as explainer:
        ours = explainer(images, classes)
    targets = None if classes is None else [ClassifierOutputTarget(c) for c in classes]
    with GradCAM(model=model, target_layers=[model.layer3]) as cam:
        expected = cam(input_tensor=images.clone().requires_grad_(True), targets=targets)
    assert ours.heatmaps.shape == expected.shape == (4, 48, 40)
    np.testing.assert_allclose(ours.heatmaps, expected, atol=1e-5)
    assert ours.classes == (ours.logits.argmax(1).tolist() if classes is None else classes)
