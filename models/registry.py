"""Model registry: ``name -> builder(num_classes) -> nn.Module``, and ``create_model``.

Each family adapter (``models/families.py``) registers its names here. ``timm/<name>`` is resolved
dynamically so every timm model is available without listing them.
"""
from __future__ import annotations

import difflib
from typing import Callable

import torch.nn as nn

Builder = Callable[[int], nn.Module]
_REGISTRY: dict[str, Builder] = {}
_FAMILY: dict[str, str] = {}
TIMM_PREFIX = "timm/"


def register_model(name: str, family: str) -> Callable[[Builder], Builder]:
    """Decorator: register ``builder(num_classes)`` under ``name``."""
    def wrap(builder: Builder) -> Builder:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is registered twice")
        _REGISTRY[name] = builder
        _FAMILY[name] = family
        return builder
    return wrap


def list_models() -> list[str]:
    """Every registered name (timm models are reachable as ``timm/<name>`` in addition)."""
    return sorted(_REGISTRY)


def model_family(name: str) -> str:
    """``torchvision``, ``efficientnet-pytorch``, ``resnest`` or ``timm``."""
    if name.startswith(TIMM_PREFIX):
        return "timm"
    check_model_name(name)
    return _FAMILY[name]


def _timm_names() -> list[str]:
    import timm
    return timm.list_models()


def check_model_name(name: str) -> None:
    """Raise ValueError (with close matches) unless ``name`` is a model ``create_model`` can build."""
    if name in _REGISTRY:
        return
    if name.startswith(TIMM_PREFIX):
        timm_name = name[len(TIMM_PREFIX):]
        import timm
        if timm.is_model(timm_name):
            return
        close = difflib.get_close_matches(timm_name, _timm_names(), n=5, cutoff=0.6)
        hint = f" Close matches: {', '.join(TIMM_PREFIX + c for c in close)}." if close else ""
        raise ValueError(f"unknown timm model {timm_name!r}.{hint}")
    close = difflib.get_close_matches(name, list(_REGISTRY), n=5, cutoff=0.6)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    raise ValueError(
        f"unknown model {name!r}.{hint} Valid names: torchvision names (resnet18, resnext50_32x4d, ...), "
        f"efficientnet-b0..b7, resnest50/101/200/269, or timm/<name>; see models.list_models().")


def build_model(name: str, num_classes: int) -> nn.Module:
    """Instantiate ``name`` with a fresh head of ``num_classes`` outputs and random weights."""
    check_model_name(name)
    if name.startswith(TIMM_PREFIX):
        import timm
        return timm.create_model(name[len(TIMM_PREFIX):], pretrained=False, num_classes=num_classes)
    return _REGISTRY[name](num_classes)
