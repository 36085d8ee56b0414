"""``simple_cnn``: a small conv net of our own for quick experiments and tests.

Three conv-GroupNorm-ReLU stages, global average pooling and one linear layer: no batch norm and no
dropout, so every sample's gradient is independent of the rest of its batch (DDP and accumulation
equal a single big batch exactly), and CAM applies directly.
"""
from __future__ import annotations

import torch.nn as nn

from .registry import register_model


class SimpleCNN(nn.Module):
    def __init__(self, num_classes: int, width: int = 32, in_chans: int = 3):
        super().__init__()
        layers, channels = [], in_chans
        for i, out in enumerate((width, width * 2, width * 4)):
            layers += [nn.Conv2d(channels, out, 3, stride=1 if i == 0 else 2, padding=1, bias=False),
                       nn.GroupNorm(8, out), nn.ReLU(inplace=True)]
            channels = out
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x):
        return self.fc(self.pool(self.features(x)).flatten(1))


@register_model("simple_cnn", "playground")
def simple_cnn(num_classes: int, in_chans: int = 3) -> nn.Module:
    return SimpleCNN(num_classes, in_chans=in_chans)
