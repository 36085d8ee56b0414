"""Models by name: ``create_model(name, num_classes, pretrained=path|None)``."""
from __future__ import annotations

from pathlib import Path

import torch.nn as nn

from . import families, simple  # noqa: F401  (register torchvision, efficientnet-pytorch, resnest, ours)
from .pretrained import classifier_keys, extract_state_dict, load_pretrained, load_state_dict_checked
from .registry import build_model, check_model_name, list_models, model_family, register_model
from .cam_layers import (default_target_layer, resolve_target_layer, spatial_target_layer,  # noqa: F401
                         target_layer_names)

__all__ = ["create_model", "check_model_name", "list_models", "model_family", "register_model", "load_pretrained",
           "extract_state_dict", "classifier_keys", "load_state_dict_checked"]


def create_model(name: str, num_classes: int, pretrained: str | Path | None = None) -> nn.Module:
    """Build ``name`` with ``num_classes`` outputs; ``pretrained`` is a local weights file or None."""
    model = build_model(name, num_classes)
    if pretrained is not None:
        load_pretrained(model, pretrained, num_classes)
    return model
