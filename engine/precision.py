"""Mixed precision: which autocast dtype a run uses, and the autocast context for it."""
from __future__ import annotations

from contextlib import nullcontext
from typing import ContextManager

import torch


def amp_dtype(enabled: bool, choice: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype, or None for full precision: bf16 where supported, else fp16 on CUDA."""
    if not enabled:
        return None
    if choice == "fp16":
        return torch.float16
    if choice == "bf16" or device.type != "cuda" or torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float16


def autocast(device: torch.device, dtype: torch.dtype | None) -> ContextManager:
    """``torch.autocast`` for ``dtype``, or a no-op context for full precision."""
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext()
