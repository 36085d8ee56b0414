"""Models by name: ``create_model(name, num_classes, pretrained=path|weights name|None)``."""
from __future__ import annotations

import logging
from pathlib import Path

import torch.nn as nn

from . import families, simple  # noqa: F401  (register torchvision, efficientnet-pytorch, resnest, ours)
from .cam_layers import default_target_layer, resolve_target_layer, spatial_target_layer, target_layer_names  # noqa: F401
from .finetune import scratch_bn_momentum
from .hub import is_weights_name, pretrained_state, resolve_weights
from .pretrained import classifier_keys, classifier_name, extract_state_dict, load_pretrained, load_state_dict_checked
from .registry import build_model, check_model_name, list_models, model_family, register_model
from .stem import adapt_state

__all__ = ["create_model", "check_model_name", "list_models", "model_family", "register_model", "load_pretrained",
           "extract_state_dict", "classifier_keys", "classifier_name", "load_state_dict_checked"]

logger = logging.getLogger(__name__)


def create_model(name: str, num_classes: int, pretrained: str | Path | None = None,
                 drop_rate: float | None = None, drop_path_rate: float | None = None, in_chans: int = 3) -> nn.Module:
    """Build ``name`` with ``num_classes`` outputs for ``in_chans``-channel input (``models.stem``).

    ``pretrained``: None (random weights; batch-norm momentum raised to 0.1, see ``scratch_bn_momentum``),
    a local weights file (a head of another size is skipped), or a weights name (``imagenet``,
    ``IMAGENET1K_V2``, a timm tag: ``models.hub``) whose every weight but the classifier is loaded; the
    classifier is a new head for ``num_classes`` (a package's, ``hf-hub:``/``local-dir:``, is kept when it has
    ``num_classes`` outputs); RGB stem filters are fitted to ``in_chans`` as timm does
    (one channel: their sum). ``drop_rate``/``drop_path_rate``: None keeps the model's own.
    """
    model = build_model(name, num_classes, drop_rate=drop_rate, drop_path_rate=drop_path_rate, in_chans=in_chans)
    if pretrained is None:
        scratch_bn_momentum(model, name)
    elif is_weights_name(str(pretrained)):
        weights = resolve_weights(name, str(pretrained))
        head = classifier_keys(model, num_classes)
        state = adapt_state(model, pretrained_state(weights))
        if weights.keep_head:
            skipped = load_state_dict_checked(model, state, weights.name, skippable=head)
            logger.info("pretrained %s: loaded every weight%s", weights.name,
                        f" but the head of another class count (new head: {', '.join(skipped)})" if skipped
                        else ", its head too (as many classes)")
        else:
            load_state_dict_checked(model, state, weights.name, replace=head)
            logger.info("pretrained %s: loaded every weight but the new head (%s)", weights.name,
                        ", ".join(sorted(head)))
    else:
        load_pretrained(model, pretrained, num_classes)
    return model
