"""Loading a local weights file into a model, skipping a classifier head of another size."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from utils.checkpoint import CheckpointError, load_checkpoint

logger = logging.getLogger(__name__)

_STATE_KEYS = ("model", "state_dict", "model_state_dict", "module")


def extract_state_dict(obj: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The state dict inside a torchvision/timm weights file or one of our checkpoints.

    ``module.`` prefixes left by DataParallel/DDP and ``_orig_mod.`` left by ``torch.compile`` are removed.
    """
    for key in _STATE_KEYS:
        if key in obj and isinstance(obj[key], dict):
            obj = obj[key]
            break
    state = {}
    for k, v in obj.items():
        if not isinstance(v, torch.Tensor):
            continue
        for prefix in ("module.", "_orig_mod."):
            if k.startswith(prefix):
                k = k[len(prefix):]
        state[k] = v
    return state


def classifier_keys(model: nn.Module, num_classes: int) -> set[str]:
    """State-dict keys of the classifier head: the last Linear/Conv2d module producing ``num_classes``."""
    head = None
    for name, module in model.named_modules():
        out = getattr(module, "out_features", getattr(module, "out_channels", None))
        if isinstance(module, (nn.Linear, nn.Conv2d)) and out == num_classes:
            head = name
    if head is None:
        return set()
    return {f"{head}.{p}" for p, _ in model.get_submodule(head).named_parameters(recurse=False)}


def load_state_dict_checked(model: nn.Module, state: dict[str, torch.Tensor], source: str | Path,
                            skippable: set[str] = frozenset(), replace: set[str] = frozenset()) -> list[str]:
    """Load ``state`` into ``model``; keys in ``skippable`` whose shape differs are skipped and returned,
    keys in ``replace`` (a new head) are never loaded and keep the model's own initial values.

    Any other missing, unexpected or mis-shaped key is an error that lists the keys: the weights belong
    to another architecture or class count.
    """
    own = model.state_dict()
    state = {k: v for k, v in state.items() if k not in replace}
    skipped, mismatched = [], []
    for k, v in list(state.items()):
        if k in own and own[k].shape != v.shape:
            if k in skippable:
                skipped.append(k)
                del state[k]
            else:
                mismatched.append(f"{k}: file {tuple(v.shape)} vs model {tuple(own[k].shape)}")
    missing = sorted(set(own) - set(state) - set(skipped) - set(replace))
    unexpected = sorted(set(state) - set(own))
    if mismatched or missing or unexpected:
        def show(keys: list[str]) -> str:
            return ", ".join(keys[:8]) + (f" ... ({len(keys)} in all)" if len(keys) > 8 else "")
        parts = [f"{name} keys: {show(keys)}" for name, keys in
                 (("mismatched", mismatched), ("missing", missing), ("unexpected", unexpected)) if keys]
        raise CheckpointError(f"{source} does not fit this model (another architecture or class count?); "
                              + "; ".join(parts))
    model.load_state_dict(state, strict=False)
    return skipped


def load_pretrained(model: nn.Module, path: str | Path, num_classes: int) -> list[str]:
    """Load weights from a local file; classifier tensors of another shape are skipped and returned."""
    state = extract_state_dict(load_checkpoint(path))
    skipped = load_state_dict_checked(model, state, path, skippable=classifier_keys(model, num_classes))
    if skipped:
        logger.info("pretrained %s: skipped classifier weights of another class count: %s", path, ", ".join(skipped))
    else:
        logger.info("pretrained %s: loaded every weight", path)
    return skipped
