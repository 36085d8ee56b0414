"""Online distillation in the training loop: a frozen teacher run on each batch, and the blended loss.

``OnlineTeacher`` plugs into ``train_one_epoch`` (its ``distiller`` argument): :meth:`OnlineTeacher.teach` runs
the teacher on the batch the student is about to see (after the batch hook: the same augmented and mixed
images), brought to the teacher's own preprocessing by :class:`TeacherInput`, under no_grad and the run's
autocast, timed with ``perf_counter`` (synchronised on CUDA) so that the epoch can report the teacher's share of
the step time; :meth:`OnlineTeacher.loss` blends the task loss with the distillation loss of ``criterions.distill``.
The teacher is never wrapped in DDP: every rank holds its own copy and nothing of it is trained or reduced.
"""
from __future__ import annotations

import time
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from criterions.distill import blend, feature_kd, kd_loss

from .precision import autocast

__all__ = ["OnlineTeacher", "TeacherInput", "FeatureTap"]


class TeacherInput(nn.Module):
    """The student's normalised batch as the teacher expects it: un-normalised with the student's mean/std,
    normalised with the teacher's, resized (bilinear, antialiased) to the teacher's input size (H, W); an
    identity where the two agree."""

    def __init__(self, student_mean: Sequence[float], student_std: Sequence[float], teacher_mean: Sequence[float],
                 teacher_std: Sequence[float], student_size: Sequence[int], teacher_size: Sequence[int]):
        super().__init__()
        self.renormalise = (tuple(student_mean), tuple(student_std)) != (tuple(teacher_mean), tuple(teacher_std))
        as_column = (lambda v: torch.tensor(v, dtype=torch.float32).view(1, -1, 1, 1))
        # x_t = (x_s * std_s + mean_s - mean_t) / std_t = x_s * scale + shift
        self.register_buffer("scale", as_column(student_std) / as_column(teacher_std), persistent=False)
        self.register_buffer("shift", (as_column(student_mean) - as_column(teacher_mean)) / as_column(teacher_std),
                             persistent=False)
        self.size = None if tuple(teacher_size) == tuple(student_size) else tuple(int(s) for s in teacher_size)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.renormalise:
            images = images * self.scale.to(images) + self.shift.to(images)
        if self.size is not None:
            images = F.interpolate(images, size=self.size, mode="bilinear", align_corners=False,
                                   antialias=True)
        return images


class FeatureTap:
    """The output of one layer, kept from the last forward (a forward hook)."""

    def __init__(self, layer: nn.Module):
        self.output: torch.Tensor | None = None
        self.handle = layer.register_forward_hook(self._keep)

    def _keep(self, module: nn.Module, args, output: torch.Tensor) -> None:
        self.output = output

    def take(self) -> torch.Tensor:
        out, self.output = self.output, None
        if out is None:
            raise RuntimeError("the feature layer did not run in this forward pass")
        return out


class OnlineTeacher:
    """A frozen ``teacher`` (eval mode, no gradients) and the loss ``(1 - alpha) * task + alpha * distill``.

    ``kind``: ``logit`` (``criterions.distill.kd_loss`` at ``temperature``; per class with ``multi_label``) or
    ``feature`` (``feature_kd`` between ``teacher_tap``'s map and ``projection(student_tap)``'s; ``projection`` is
    what runs it: DDP-wrapped under DDP so that its gradients are averaged like the student's).
    ``adapt``: the teacher's input from the student's (:class:`TeacherInput`). ``seconds`` sums the time spent
    in :meth:`teach` since the last :meth:`take_seconds`."""

    def __init__(self, teacher: nn.Module, *, alpha: float, temperature: float = 1.0, kind: str = "logit",
                 multi_label: bool = False, adapt: nn.Module | None = None, student_tap: FeatureTap | None = None,
                 teacher_tap: FeatureTap | None = None, projection: nn.Module | None = None):
        if kind not in ("logit", "feature"):
            raise ValueError(f"unknown distillation type {kind!r}; choose from logit, feature")
        if kind == "feature" and (student_tap is None or teacher_tap is None or projection is None):
            raise ValueError("feature distillation needs the student's and the teacher's feature layers and a "
                             "projection")
        self.teacher = teacher.eval().requires_grad_(False)
        self.alpha, self.temperature, self.kind, self.multi_label = alpha, temperature, kind, multi_label
        self.adapt = adapt if adapt is not None else nn.Identity()
        self.student_tap, self.teacher_tap, self.projection = student_tap, teacher_tap, projection
        self.seconds = 0.0

    @torch.no_grad()
    def teach(self, images: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
        """The teacher's logits (``logit``) or last feature map (``feature``) for the student's batch ``images``."""
        cuda = images.device.type == "cuda"
        if cuda:
            torch.cuda.synchronize(images.device)
        start = time.perf_counter()
        self.teacher.eval()  # stays in eval mode whatever the caller does with train()
        with autocast(images.device, dtype):
            logits = self.teacher(self.adapt(images))
        out = self.teacher_tap.take() if self.kind == "feature" else logits
        if cuda:
            torch.cuda.synchronize(images.device)
        self.seconds += time.perf_counter() - start
        return out

    def loss(self, task: torch.Tensor, logits: torch.Tensor, taught: torch.Tensor) -> torch.Tensor:
        """The blended loss of the student's ``logits`` (and, for ``feature``, its tapped map) given the task loss
        ``task`` and the teacher's output ``taught`` from :meth:`teach`."""
        if self.kind == "feature":
            distill = feature_kd(self.projection(self.student_tap.take()), taught)
        else:
            distill = kd_loss(logits, taught, self.temperature, multi_label=self.multi_label)
        return blend(task, distill, self.alpha)

    def take_seconds(self) -> float:
        """The teacher's time since the last call (and start counting afresh)."""
        seconds, self.seconds = self.seconds, 0.0
        return seconds
