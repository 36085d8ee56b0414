"""Adapters that register torchvision, efficientnet-pytorch and resnest models (timm is dynamic).

No builder downloads weights: pretrained weights come from a local file (``models.pretrained``) or by
name through each library's own loader and cache (``models.hub``).
"""
from __future__ import annotations

import functools

import torch.nn as nn

from .registry import register_model


def _torchvision(name: str, num_classes: int, **extra) -> nn.Module:
    import torchvision
    kwargs = {"weights": None, "num_classes": num_classes, **extra}
    if name in ("inception_v3", "googlenet"):
        kwargs.update(aux_logits=False, init_weights=True)
    return torchvision.models.get_model(name, **kwargs)


def _efficientnet_pytorch(name: str, num_classes: int, **extra) -> nn.Module:
    from efficientnet_pytorch import EfficientNet
    return EfficientNet.from_name(name, num_classes=num_classes, **extra)


def _resnest(name: str, num_classes: int, **extra) -> nn.Module:
    import resnest.torch
    return getattr(resnest.torch, name)(pretrained=False, num_classes=num_classes, **extra)


def _register_all() -> None:
    import torchvision
    for name in torchvision.models.list_models(module=torchvision.models):
        register_model(name, "torchvision")(functools.partial(_torchvision, name))
    for i in range(8):
        name = f"efficientnet-b{i}"
        register_model(name, "efficientnet-pytorch")(functools.partial(_efficientnet_pytorch, name))
    for name in ("resnest50", "resnest101", "resnest200", "resnest269"):
        register_model(name, "resnest")(functools.partial(_resnest, name))


_register_all()
