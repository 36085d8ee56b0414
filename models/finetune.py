"""Fine-tuning helpers: the new head, a frozen backbone, layer-wise LR scales, batch-norm statistics.

The *head* is the classifier layer producing the class scores (``classifier_keys``); everything else is
the *backbone*. A frozen backbone has ``requires_grad=False`` and its batch norms run in eval mode
(running statistics used and left untouched) even while the model is in training mode.
"""
from __future__ import annotations

import logging
from typing import Iterable

import torch
import torch.nn as nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.utils.hooks import RemovableHandle

logger = logging.getLogger(__name__)

SCRATCH_BN_MOMENTUM = 0.1


def head_parameter_names(model: nn.Module, num_classes: int) -> set[str]:
    """Names of the head's parameters (the last Linear/Conv2d with ``num_classes`` outputs)."""
    from .pretrained import classifier_keys
    head = classifier_keys(model, num_classes)
    if not head:
        raise ValueError(f"found no classifier layer with {num_classes} outputs in {type(model).__name__}")
    return head


def _keep_eval(module: nn.Module, args: tuple) -> None:
    module.training = False  # a frozen batch norm normalises with its running statistics and keeps them


def freeze_backbone(model: nn.Module, head: set[str]) -> list[RemovableHandle]:
    """Stop every parameter outside ``head`` from training and keep the backbone's batch norms in eval mode.

    Returns the hooks that hold the batch norms in eval mode; :func:`unfreeze` undoes both.
    """
    for name, p in model.named_parameters():
        p.requires_grad_(name in head)
    handles = []
    for name, module in model.named_modules():
        if isinstance(module, _BatchNorm) and not any(k.startswith(name + ".") for k in head):
            handles.append(module.register_forward_pre_hook(_keep_eval))
    return handles


def unfreeze(model: nn.Module, handles: list[RemovableHandle]) -> None:
    """Every parameter trains again and the batch norms follow the model's mode."""
    for h in handles:
        h.remove()
    handles.clear()
    for p in model.parameters():
        p.requires_grad_(True)


def layer_ids(model: nn.Module, head: set[str]) -> dict[str, int]:
    """Depth index of each parameter, for layer-wise LR decay: the head is the deepest layer.

    timm models group their parameters with their own ``group_matcher`` (as timm's layer decay does);
    other models count their top-level children in order, a Sequential/ModuleList child block by block
    (resnet's ``layer1.0``, ``layer1.1``, ...; mobilenet's ``features.N``; efficientnet's ``_blocks.N``), as
    timm's fine-grained matchers do.
    """
    names = [n for n, _ in model.named_parameters()]
    if hasattr(model, "group_matcher"):
        from timm.models import group_parameters
        ids = group_parameters(model, model.group_matcher(coarse=False), reverse=True)
    else:
        unit: dict[str, int] = {}
        index = 0
        for child_name, child in model.named_children():
            parts = (list(child.named_children()) if isinstance(child, (nn.Sequential, nn.ModuleList))
                     else [("", child)])
            for sub, _ in parts:
                prefix = f"{child_name}.{sub}." if sub else f"{child_name}."
                owned = [n for n in names if n.startswith(prefix) and n not in head]
                if owned:
                    unit.update({n: index for n in owned})
                    index += 1
        ids = {n: unit.get(n, 0) for n in names}
    top = max((i for n, i in ids.items() if n not in head), default=-1) + 1
    return {n: (top if n in head else ids[n]) for n in names}


def lr_scales(model: nn.Module, head: set[str], head_lr_mult: float = 1.0,
              layer_decay: float | None = None) -> dict[str, float]:
    """LR factor per parameter: ``layer_decay ** (depth of the head - depth)`` for the backbone (1 without
    layer decay), ``head_lr_mult`` for the head."""
    ids = layer_ids(model, head) if layer_decay is not None else {}
    top = max(ids.values(), default=0)
    return {n: head_lr_mult if n in head else (layer_decay ** (top - ids[n]) if layer_decay is not None else 1.0)
            for n, _ in model.named_parameters()}


def scratch_bn_momentum(model: nn.Module, name: str, momentum: float = SCRATCH_BN_MOMENTUM) -> int:
    """Raise batch-norm momentum below ``momentum`` to it; returns how many layers changed.

    torchvision's MobileNetV3 and efficientnet-pytorch use TensorFlow's 0.01 (a running average over about
    100 steps), tuned for ImageNet schedules of 100k+ steps. Trained from scratch for a few hundred steps,
    the running statistics then lag far behind the quickly changing weights and evaluation sits at
    chance; PyTorch's default 0.1 tracks them. Pretrained models keep their library's value: their
    statistics start from the pretrained ones and change slowly while fine-tuning.
    """
    changed = [m for m in model.modules()
               if isinstance(m, _BatchNorm) and m.momentum is not None and m.momentum < momentum]
    old = sorted({m.momentum for m in changed})
    for m in changed:
        m.momentum = momentum
    if changed:
        logger.info("%s: batch-norm momentum %s -> %g in %d layers (trained from scratch; see "
                    "models.finetune.scratch_bn_momentum)", name, "/".join(f"{v:g}" for v in old), momentum,
                    len(changed))
    return len(changed)


@torch.no_grad()
def update_bn_stats(model: nn.Module, batches: Iterable[torch.Tensor], num_batches: int) -> int:
    """Recompute the running mean and variance of every training batch norm over ``num_batches`` batches.

    As fvcore's ``update_bn_stats`` / ``torch.optim.swa_utils.update_bn``: the statistics are reset and
    averaged with equal weight over the batches (momentum None), in training mode. Frozen batch norms
    (parameters not training) are left alone, and nothing but the running statistics changes
    (``num_batches_tracked`` and the modes are restored). Returns the number of batches used.
    """
    bns = [m for m in model.modules() if isinstance(m, _BatchNorm) and m.track_running_stats
           and all(p.requires_grad for p in m.parameters(recurse=False))]
    if not bns or num_batches <= 0:
        return 0
    saved = {m: (m.momentum, m.num_batches_tracked.clone(), m.running_mean.clone(), m.running_var.clone())
             for m in bns}
    modes = {m: m.training for m in model.modules()}
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    seen = 0
    for images in batches:
        model(images)
        seen += 1
        if seen >= num_batches:
            break
    for m, (momentum, tracked, mean, var) in saved.items():
        m.momentum = momentum
        m.num_batches_tracked.copy_(tracked)
        if seen == 0:  # no batch came: keep the statistics there were
            m.running_mean.copy_(mean)
            m.running_var.copy_(var)
    for m, mode in modes.items():
        m.training = mode
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        world = torch.distributed.get_world_size()
        for m in bns:  # every rank saw its own shard: average, as pycls does
            for buf in (m.running_mean, m.running_var):
                torch.distributed.all_reduce(buf)
                buf.div_(world)
    return seen
