"""``create_optimizer``: optimizers by name, without weight decay on 1-D parameters.

``torch.optim`` supplies SGD, Adam, AdamW, RAdam and NAdam; ``timm.optim`` supplies LAMB and
Lookahead (with its slow weights fixed to start at step 0, see :func:`wrap_lookahead`), which wraps any of
them (``ranger`` is RAdam inside Lookahead, as in Wright's Ranger).
"""
from __future__ import annotations

import functools
from typing import Any, Callable

import torch
import torch.nn as nn


def param_groups(model: nn.Module, weight_decay: float, lr: float | None = None,
                 lr_scales: dict[str, float] | None = None) -> list[dict[str, Any]]:
    """Weights with decay, and biases and normalisation weights (every 1-D tensor) without.

    With ``lr_scales`` (parameter name -> LR factor: a higher LR for a new head, layer-wise decay) there is
    one such pair per factor, each with ``lr = lr * factor`` and its ``lr_scale``; the schedule then scales
    every group's own LR. Without, two groups at the optimizer's LR.
    """
    groups: dict[tuple[float, bool], dict[str, Any]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        scale = lr_scales[name] if lr_scales is not None else 1.0
        decay = p.ndim > 1
        group = groups.setdefault((scale, decay), {"params": [], "weight_decay": weight_decay if decay else 0.0})
        if lr_scales is not None:
            group.update(lr=lr * scale, lr_scale=scale)
        group["params"].append(p)
    return [groups[k] for k in sorted(groups, key=lambda k: (-k[0], not k[1]))]


def base_lr(optimizer: torch.optim.Optimizer) -> float:
    """The schedule's current LR without per-group factors (the LR of a group at factor 1)."""
    group = optimizer.param_groups[0]
    return group["lr"] / group.get("lr_scale", 1.0)


def _lamb(params: list[dict[str, Any]], lr: float, **_: Any) -> torch.optim.Optimizer:
    from timm.optim import Lamb
    return Lamb(params, lr=lr)


OPTIMIZERS: dict[str, Callable[..., torch.optim.Optimizer]] = {
    "sgd": lambda params, lr, momentum=0.9, nesterov=False, **_: torch.optim.SGD(
        params, lr=lr, momentum=momentum, nesterov=nesterov and momentum > 0),
    "adam": lambda params, lr, **_: torch.optim.Adam(params, lr=lr),
    "adamw": lambda params, lr, **_: torch.optim.AdamW(params, lr=lr),
    "radam": lambda params, lr, **_: torch.optim.RAdam(params, lr=lr),
    "nadam": lambda params, lr, **_: torch.optim.NAdam(params, lr=lr),
    "lamb": _lamb,
    "ranger": lambda params, lr, **_: torch.optim.RAdam(params, lr=lr),  # wrapped in Lookahead below
}
ALWAYS_LOOKAHEAD = {"ranger"}


def create_optimizer(model: nn.Module, name: str = "sgd", lr: float = 0.1, weight_decay: float = 0.0,
                     momentum: float = 0.9, nesterov: bool = False, lookahead: bool = False,
                     lookahead_alpha: float = 0.5, lookahead_k: int = 6,
                     lr_scales: dict[str, float] | None = None, also: nn.Module | None = None) -> torch.optim.Optimizer:
    """Build optimizer ``name`` over ``model``'s parameters (decay only on weights of rank >= 2);
    ``lr_scales`` gives parameters their own LR factor (see ``param_groups``). ``also``: a module trained beside
    the model at the base LR, in groups after the model's (``--distill_type feature``'s projection).

    ``lookahead`` wraps it in Lookahead (Zhang et al., 2019): every ``lookahead_k`` steps the slow
    weights move ``lookahead_alpha`` of the way to the fast ones.
    """
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; choose from {', '.join(OPTIMIZERS)}")
    groups = param_groups(model, weight_decay, lr, lr_scales)
    if also is not None:
        groups += param_groups(also, weight_decay, lr, None if lr_scales is None
                               else {n: 1.0 for n, _ in also.named_parameters()})
    optimizer = OPTIMIZERS[name](groups, lr=lr, momentum=momentum, nesterov=nesterov)
    if lookahead or name in ALWAYS_LOOKAHEAD:
        optimizer = wrap_lookahead(optimizer, alpha=lookahead_alpha, k=lookahead_k)
    return optimizer


def wrap_lookahead(optimizer: torch.optim.Optimizer, alpha: float = 0.5, k: int = 6) -> torch.optim.Optimizer:
    """``optimizer`` inside Lookahead, with the slow weights starting as the weights before the first step."""
    return _lookahead_class()(optimizer, alpha=alpha, k=k)


@functools.cache
def _lookahead_class() -> type:
    """timm's Lookahead copies the slow weights lazily at the first synchronisation (step k), from the fast
    weights of that moment: that synchronisation moves nothing, and the first k steps equal the bare
    optimizer's (``ranger`` was ``radam`` until step 2k). This subclass keeps the weights from before the
    first step and stores them as the slow copy right after it (not before: Adam-like optimizers
    initialise their state only when it is empty), so the first synchronisation pulls the fast weights
    ``alpha`` of the way back to the start, as in the paper. The slow copy lives in the inner
    optimizer's state, so it is saved and resumed with it."""
    from timm.optim import Lookahead

    class SlowFromStartLookahead(Lookahead):
        @torch.no_grad()
        def step(self, closure: Callable | None = None) -> Any:
            state = self._base_optimizer.state
            start = [(p, p.detach().clone()) for group in self.param_groups for p in group["params"]
                     if p.grad is not None and "lookahead_slow_buff" not in state[p]]
            loss = self._base_optimizer.step(closure)
            for p, weights in start:
                state[p]["lookahead_slow_buff"] = weights
            for group in self.param_groups:
                group["lookahead_step"] += 1
                if group["lookahead_step"] % group["lookahead_k"] == 0:
                    self.update_slow(group)
            return loss

    return SlowFromStartLookahead
