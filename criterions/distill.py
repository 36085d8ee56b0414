"""Online knowledge distillation losses (Hinton et al. 2015; timm's ``--kd-model-name``, DeiT's soft KD).

    kd   = T^2 * KL(softmax(teacher / T) || softmax(student / T))     mean over the batch ("batchmean")
    loss = (1 - alpha) * task + alpha * kd

The ``T^2`` keeps the soft term's gradient on the scale of the task loss's as T grows (Hinton et al.,
section 2). With ``multi_label`` (sigmoid heads, one independent yes/no per class) the KL is taken per class
between the Bernoulli distributions ``sigmoid(teacher / T)`` and ``sigmoid(student / T)``, averaged over
classes as the ``bce`` head averages its terms, then over the batch. ``feature_kd`` is the feature route: MSE
between the teacher's last feature map and the student's, brought to the teacher's channels by a learned 1x1
projection (FitNets' regressor) and to its spatial size by interpolation.

The teacher's logits are detached here: no gradient ever flows into the teacher.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["kd_loss", "feature_kd", "FeatureProjection", "blend"]


def kd_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float = 1.0,
            multi_label: bool = False) -> torch.Tensor:
    """``T^2 * KL(teacher / T || student / T)`` over logits ``N x C``, the mean over the batch (float32)."""
    s, t = student.float() / temperature, teacher.detach().float() / temperature
    if multi_label:  # per class: KL between Bernoulli(sigmoid(t)) and Bernoulli(sigmoid(s))
        p = torch.sigmoid(t)
        kl = p * (F.logsigmoid(t) - F.logsigmoid(s)) + (1 - p) * (F.logsigmoid(-t) - F.logsigmoid(-s))
        return kl.mean(dim=1).mean() * temperature ** 2
    kl = F.kl_div(F.log_softmax(s, dim=1), F.log_softmax(t, dim=1), reduction="batchmean", log_target=True)
    return kl * temperature ** 2


def blend(task: torch.Tensor, distill: torch.Tensor, alpha: float) -> torch.Tensor:
    """``(1 - alpha) * task + alpha * distill``."""
    return (1.0 - alpha) * task + alpha * distill


class FeatureProjection(nn.Module):
    """A 1x1 convolution from the student's feature channels to the teacher's (trained with the student,
    kept in the training state for resuming, never part of the student's weights or exports)."""

    def __init__(self, student_channels: int, teacher_channels: int):
        super().__init__()
        self.proj = nn.Conv2d(student_channels, teacher_channels, kernel_size=1, bias=False)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.proj(features)


def feature_kd(projected: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """MSE between the projected student feature map and the teacher's ``N x C x H x W`` (the student's resized to
    the teacher's H x W when they differ), in float32."""
    projected, teacher = projected.float(), teacher.detach().float()
    if projected.shape[-2:] != teacher.shape[-2:]:
        projected = F.interpolate(projected, size=teacher.shape[-2:], mode="bilinear", align_corners=False)
    return F.mse_loss(projected, teacher)
