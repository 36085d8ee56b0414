"""Exponential moving average of the weights (``--ema``), evaluated and saved beside the raw weights."""
from __future__ import annotations

import copy

import torch
import torch.nn as nn


class ModelEma(nn.Module):
    """``ema = decay * ema + (1 - decay) * weights`` after every optimizer step; buffers are copied.

    The average lives in a frozen copy of the model (same device), so evaluating it is just
    ``evaluate(ema.module, ...)``.
    """

    def __init__(self, model: nn.Module, decay: float = 0.9998):
        super().__init__()
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"--ema_decay must be in [0, 1), got {decay}")
        self.module = copy.deepcopy(model).eval()
        self.decay = decay
        for p in self.module.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """One EMA step towards ``model`` (a DDP- or compile-wrapped model is unwrapped)."""
        while isinstance(getattr(model, "module", None), nn.Module) or hasattr(model, "_orig_mod"):
            model = getattr(model, "_orig_mod", None) or model.module
        own = self.module.state_dict()
        for k, v in model.state_dict().items():
            if v.dtype.is_floating_point:
                own[k].mul_(self.decay).add_(v.detach(), alpha=1.0 - self.decay)
            else:
                own[k].copy_(v)
