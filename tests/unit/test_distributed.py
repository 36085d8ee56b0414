"""DDP through real torchrun processes on the CPU (Gloo), and gradient checkpointing."""
from __future__ import annotations

import copy

import pytest
import torch

import models
from models.memory import enable_gradient_checkpointing


@pytest.mark.parametrize("arch", ["resnet18", "timm/resnet18", "resnest50"])
def test_gradient_checkpointing_gives_the_same_gradients_and_statistics(arch):
    torch.manual_seed(0)
    plain = models.create_model(arch, 5)
    ckpt = enable_gradient_checkpointing(copy.deepcopy(plain), arch)
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    for m in (plain, ckpt):
        m.train()
        torch.nn.functional.cross_entropy(m(x), y).backward()
    for (name, a), b in zip(plain.named_parameters(), ckpt.parameters()):
        assert torch.allclose(a.grad, b.grad, atol=1e-6), name
    sa, sb = plain.state_dict(), ckpt.state_dict()
    assert list(sa) == list(sb) and all(torch.equal(sa[k], sb[k]) for k in sa)  # BN statistics updated once


def test_gradient_checkpointing_refuses_other_models():
    with pytest.raises(ValueError, match="--use_checkpoint is not supported for mobilenet_v3_small"):
        enable_gradient_checkpointing(models.create_model("mobilenet_v3_small", 3), "mobilenet_v3_small")
