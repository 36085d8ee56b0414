"""Loading a local weights file into a model, skipping a classifier head of another size.

Every weights file the project reads, given with ``--pretrained PATH`` or found in a library's cache by
``models.hub``, goes through :func:`read_weights`: ``torch.load(weights_only=True)`` or safetensors, so
no file ever runs code when it is opened.
"""
from __future__ import annotations

import logging
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from utils.checkpoint import CheckpointError, load_checkpoint, load_safetensors

from .stem import adapt_state, channel_mismatch

logger = logging.getLogger(__name__)

_STATE_KEYS = ("model", "state_dict", "model_state_dict", "module")
_WRAPPER_PREFIXES = ("module", "_orig_mod")  # DataParallel/DDP, torch.compile


def _strip_wrappers(key: str) -> str:
    for prefix in _WRAPPER_PREFIXES:
        if key == prefix:  # a metadata key: the wrapped model's own root
            key = ""
        elif key.startswith(prefix + "."):
            key = key[len(prefix) + 1:]
    return key


def extract_state_dict(obj: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The state dict inside a torchvision/timm weights file or one of our checkpoints.

    ``module.`` prefixes left by DataParallel/DDP and ``_orig_mod.`` left by ``torch.compile`` are removed.
    The state dict's ``_metadata`` (each module's format version, which e.g. torchvision's MNASNet
    requires to load) is kept, under the same renaming.
    """
    for key in _STATE_KEYS:
        if key in obj and isinstance(obj[key], dict):
            obj = obj[key]
            break
    state: dict[str, torch.Tensor] = OrderedDict(
        (_strip_wrappers(k), v) for k, v in obj.items() if isinstance(v, torch.Tensor))
    metadata = getattr(obj, "_metadata", None)
    if isinstance(metadata, dict):
        state._metadata = OrderedDict((_strip_wrappers(k), v) for k, v in metadata.items())  # type: ignore[attr-defined]
    return state


def read_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """The state dict in a weights file, read without running code: a ``.safetensors`` file with
    safetensors, anything else with :func:`utils.checkpoint.load_checkpoint` (``weights_only=True``), then
    :func:`extract_state_dict`. A missing, empty, corrupt or unsafe file is a CheckpointError naming it."""
    path = Path(path)
    if path.suffix != ".safetensors":
        return extract_state_dict(load_checkpoint(path))
    return extract_state_dict(load_safetensors(path)[0])


def classifier_name(model: nn.Module, num_classes: int) -> str | None:
    """The classifier head's module name: the last Linear/Conv2d module producing ``num_classes`` (any family:
    ``fc``, ``classifier.1``, timm's ``head.fc``, efficientnet-pytorch's ``_fc``, squeezenet's final conv)."""
    head = None
    for name, module in model.named_modules():
        out = getattr(module, "out_features", getattr(module, "out_channels", None))
        if isinstance(module, (nn.Linear, nn.Conv2d)) and out == num_classes:
            head = name
    return head


def classifier_keys(model: nn.Module, num_classes: int) -> set[str]:
    """State-dict keys of the classifier head (:func:`classifier_name`)."""
    head = classifier_name(model, num_classes)
    if head is None:
        return set()
    return {f"{head}.{p}" for p, _ in model.get_submodule(head).named_parameters(recurse=False)}


def load_state_dict_checked(model: nn.Module, state: dict[str, torch.Tensor], source: str | Path,
                            skippable: set[str] = frozenset(), replace: set[str] = frozenset()) -> list[str]:
    """Load ``state`` into ``model``; keys in ``skippable`` whose shape differs are skipped and returned,
    keys in ``replace`` (a new head) are never loaded and keep the model's own initial values.

    Any other missing, unexpected or mis-shaped key is an error that lists the keys: the weights belong
    to another architecture or class count. ``state._metadata`` (module format versions) is passed on;
    a state dict without it (built by hand) is read as in this model's own format, which its keys and
    shapes, checked here, match.
    """
    own = model.state_dict()
    metadata = getattr(state, "_metadata", None)
    state = OrderedDict((k, v) for k, v in state.items() if k not in replace)
    state._metadata = metadata if metadata is not None else own._metadata  # type: ignore[attr-defined]
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
        channels = [m for m in (channel_mismatch(k, tuple(v.shape), tuple(own[k].shape)) for k, v in state.items()
                                if k in own and own[k].shape != v.shape) if m]
        if channels:
            raise CheckpointError(f"{source} does not fit this model: {channels[0]}")

        def show(keys: list[str]) -> str:
            return ", ".join(keys[:8]) + (f" ... ({len(keys)} in all)" if len(keys) > 8 else "")
        parts = [f"{name} keys: {show(keys)}" for name, keys in
                 (("mismatched", mismatched), ("missing", missing), ("unexpected", unexpected)) if keys]
        raise CheckpointError(f"{source} does not fit this model (another architecture or class count?); "
                              + "; ".join(parts))
    model.load_state_dict(state, strict=False)
    return skipped


def load_pretrained(model: nn.Module, path: str | Path, num_classes: int) -> list[str]:
    """Load weights from a local file; classifier tensors of another shape are skipped and returned, RGB stem
    filters are fitted to a stem of other channels (:func:`models.stem.adapt_state`)."""
    state = adapt_state(model, read_weights(path))
    skipped = load_state_dict_checked(model, state, path, skippable=classifier_keys(model, num_classes))
    if skipped:
        logger.info("pretrained %s: skipped classifier weights of another class count: %s", path, ", ".join(skipped))
    else:
        logger.info("pretrained %s: loaded every weight", path)
    return skipped
