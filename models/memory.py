"""Gradient checkpointing (``--use_checkpoint``): recompute activations in the backward pass.

Models with the ResNet layout (torchvision ResNet/ResNeXt/Wide-ResNet, resnest, timm's resnets)
checkpoint each residual block of ``layer1``..``layer4``; other timm models use timm's own
``set_grad_checkpointing``. The
forward of each block runs once more during backward; batch-norm running statistics are frozen during
that recomputation (momentum 0), so they are updated exactly once per step, as without checkpointing.
"""
from __future__ import annotations

import contextlib
import types
from typing import Iterator

import torch
import torch.nn as nn
from torch.utils.checkpoint import checkpoint

STAGES = ("layer1", "layer2", "layer3", "layer4")


@contextlib.contextmanager
def _frozen_bn_stats(module: nn.Module) -> Iterator[None]:
    norms = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [(m.momentum, m.num_batches_tracked.clone() if m.num_batches_tracked is not None else None) for m in norms]
    for m in norms:
        m.momentum = 0.0
    try:
        yield
    finally:
        for m, (momentum, tracked) in zip(norms, saved):
            m.momentum = momentum
            if tracked is not None:
                m.num_batches_tracked.copy_(tracked)


def _checkpointed_forward(self: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
    for block in self:
        if self.training and torch.is_grad_enabled():
            x = checkpoint(block, x, use_reentrant=False,
                           context_fn=lambda b=block: (contextlib.nullcontext(), _frozen_bn_stats(b)))
        else:
            x = block(x)
    return x


def enable_gradient_checkpointing(model: nn.Module, arch: str) -> nn.Module:
    """Turn on gradient checkpointing for ``model`` (state-dict keys are unchanged)."""
    if all(isinstance(getattr(model, name, None), nn.Sequential) for name in STAGES):
        for name in STAGES:
            stage = getattr(model, name)
            stage.forward = types.MethodType(_checkpointed_forward, stage)
        return model
    if hasattr(model, "set_grad_checkpointing"):  # timm's own (its batch norms update twice per step)
        model.set_grad_checkpointing(True)
        return model
    raise ValueError(f"--use_checkpoint is not supported for {arch}: it works for ResNet-style models "
                     f"(resnet*, resnext*, wide_resnet*, resnest*) and timm models (timm/<name>)")
