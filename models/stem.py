"""Models for images that are not RGB: the input stem built for ``in_chans`` channels (``--in_chans``).

timm models and efficientnet-pytorch take the channel count as their own argument (``in_chans``,
``in_channels``), and so does ``simple_cnn``; every other model (torchvision, resnest) is built for RGB and its
first convolution that reads 3 channels is replaced by one that reads ``in_chans`` (:func:`adapt_stem`).
Pretrained RGB weights fit such a stem as timm fits them (:func:`adapt_state`): for one channel the three
RGB filters are summed into one (``timm.models.adapt_input_conv``), so a grey image gives the response the
RGB network gives the same image tripled.
"""
from __future__ import annotations

import logging

import torch
import torch.nn as nn

logger = logging.getLogger(__name__)

RGB = 3


def first_rgb_conv(model: nn.Module) -> tuple[str, nn.Conv2d] | None:
    """``(name, module)`` of the first ``nn.Conv2d`` (in module order) that reads 3 channels; None without one."""
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d) and module.in_channels == RGB:
            return name, module
    return None


def adapt_stem(model: nn.Module, in_chans: int, arch: str = "model") -> nn.Module:
    """``model`` with its first RGB convolution replaced by a freshly initialised one reading ``in_chans``
    channels (same outputs, kernel, stride, padding, dilation, groups, bias); 3 leaves it as it is."""
    if in_chans == RGB:
        return model
    found = first_rgb_conv(model)
    if found is None:
        raise ValueError(f"--in_chans {in_chans}: {arch} has no convolution reading 3 channels to adapt; "
                         f"use --in_chans 3 or a timm model (timm/<name> takes in_chans itself)")
    name, old = found
    new = nn.Conv2d(in_chans, old.out_channels, old.kernel_size, stride=old.stride, padding=old.padding,
                    dilation=old.dilation, groups=old.groups, bias=old.bias is not None, padding_mode=old.padding_mode)
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, new)
    logger.debug("%s: stem %s rebuilt for %d input channel(s)", arch, name, in_chans)
    return model


def adapt_state(model: nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Pretrained ``state`` with its RGB input filters fitted to ``model``'s stem: every 4-D weight that has 3
    input channels in ``state`` and another count in ``model`` (the rest of its shape equal) goes through
    ``timm``'s ``adapt_input_conv`` (1 channel: the sum of the RGB filters). Other tensors are untouched;
    ``state._metadata`` is kept."""
    from timm.models import adapt_input_conv
    own = model.state_dict()
    adapted = state.copy()  # an OrderedDict copy keeps _metadata
    for key, value in state.items():
        target = own.get(key)
        if target is not None and value.ndim == 4 and value.shape[1] == RGB and _channels_differ(value, target):
            adapted[key] = adapt_input_conv(int(target.shape[1]), value)
            logger.info("pretrained stem %s: RGB filters adapted to %d channel(s)", key, target.shape[1])
    return adapted


def channel_mismatch(key: str, file_shape: tuple[int, ...], model_shape: tuple[int, ...]) -> str | None:
    """A sentence when a 4-D weight differs only in its input channels (a model trained on other images: grey
    against RGB); None otherwise."""
    if not _channels_differ(torch.empty(file_shape, device="meta"), torch.empty(model_shape, device="meta")):
        return None
    return (f"its stem {key} reads {file_shape[1]}-channel images and this model {model_shape[1]}-channel ones: "
            f"build the model with --in_chans {file_shape[1]} (the checkpoint's own)")


def _channels_differ(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Two conv weights (O x I x kH x kW) that differ in their input channels I only."""
    return (a.ndim == b.ndim == 4 and a.shape[1] != b.shape[1] and a.shape[0] == b.shape[0]
            and a.shape[2:] == b.shape[2:])


def input_channels(model: nn.Module) -> int:
    """The channels ``model`` reads: its first convolution's input channels (3 for a model without one)."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            return module.in_channels
    return RGB
