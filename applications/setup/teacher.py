"""``--teacher``: the frozen teacher of online distillation, built from a checkpoint or a named model.

``build_online_teacher`` returns the ``engine.distill.OnlineTeacher`` that ``train_one_epoch`` runs on every
batch, and, for ``--distill_type feature``, the 1x1 projection that trains with the student (its optimizer
groups and checkpoint key are the training state's; it is never part of the student's weights or exports).
"""
from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn as nn

from criterions.distill import FeatureProjection
from engine.distill import FeatureTap, OnlineTeacher, TeacherInput
from models import create_model, extract_state_dict, load_state_dict_checked
from models.cam_layers import default_target_layer, resolve_target_layer
from models.hub import pretrained_model, resolve_weights
from models.spec import ModelSpec
from utils.checkpoint import load_checkpoint
from utils.distributed import DistInfo
from utils.weights_name import WEIGHTS_DEFAULT, teacher_is_file

logger = logging.getLogger(__name__)


@dataclass
class Teacher:
    """A teacher model (on the CPU, eval mode) with what it expects: classes (None: a named ImageNet model's,
    known by count only), task, input channels, size and mean/std."""
    model: nn.Module
    name: str
    class_names: tuple[str, ...] | None
    num_classes: int
    multi_label: bool
    in_chans: int
    image_size: tuple[int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    arch: str


def load_teacher(value: str, image_size: Sequence[int]) -> Teacher:
    """``--teacher``: a checkpoint of this project (with its spec), or ``ARCH[:WEIGHTS]`` (named pretrained
    weights resolved as ``--pretrained NAME``, default ``imagenet``; input size ``image_size``, the student's)."""
    if teacher_is_file(value):
        ckpt = load_checkpoint(value)
        if not isinstance(ckpt.get("model_spec"), dict):
            raise ValueError(f"--teacher: {value} holds no model spec (a bare state dict); give a checkpoint "
                             f"trained by this project (<run>/checkpoints/best.pth)")
        spec = ModelSpec.from_dict(ckpt["model_spec"])
        model = create_model(spec.arch, spec.num_classes, in_chans=spec.in_chans)
        load_state_dict_checked(model, extract_state_dict(ckpt), value)
        return Teacher(model, value, spec.class_names, spec.num_classes, spec.multi_label, spec.in_chans,
                       spec.image_size, spec.mean, spec.std, spec.arch)
    arch, _, weights_name = value.partition(":")
    weights = resolve_weights(arch, weights_name or WEIGHTS_DEFAULT)
    model = pretrained_model(weights)
    num_classes = _output_count(model, image_size)
    pre = weights.preprocessing
    return Teacher(model, f"{arch} ({weights.name})", None, num_classes, False, 3, tuple(image_size),
                   tuple(pre["mean"]), tuple(pre["std"]), arch)


def _output_count(model: nn.Module, image_size: Sequence[int]) -> int:
    """The number of outputs of ``model`` (one forward of a blank image)."""
    with torch.no_grad():
        return int(model.eval()(torch.zeros(1, 3, *image_size)).shape[1])


def check_teacher(teacher: Teacher, class_names: Sequence[str], multi_label: bool, in_chans: int) -> None:
    """The teacher must score the student's classes, for the same task, from images of the same channels."""
    if teacher.class_names is not None and list(teacher.class_names) != list(class_names):
        raise ValueError(f"--teacher: {teacher.name} was trained on classes {list(teacher.class_names)[:10]}, the "
                         f"student on {list(class_names)[:10]}; a teacher must score the student's classes")
    if teacher.num_classes != len(class_names):
        raise ValueError(f"--teacher: {teacher.name} has {teacher.num_classes} outputs, the student's data "
                         f"{len(class_names)} classes; a teacher must score the student's classes")
    if teacher.multi_label != multi_label:
        kind = {True: "multi-label", False: "single-label"}
        raise ValueError(f"--teacher: {teacher.name} is a {kind[teacher.multi_label]} model, the student "
                         f"{kind[multi_label]}; distil between models of the same task")
    if teacher.in_chans != in_chans:
        raise ValueError(f"--teacher: {teacher.name} reads {teacher.in_chans}-channel images, the student "
                         f"{in_chans}-channel ones (--in_chans)")


def build_online_teacher(cfg: argparse.Namespace, model: nn.Module, class_names: Sequence[str],
                         info: DistInfo) -> tuple[OnlineTeacher, nn.Module | None]:
    """The online teacher for ``model`` (the student, on its device) and, for ``feature``, the projection
    (None for ``logit``), built on every rank (the teacher unwrapped; the projection DDP-wrapped where it runs)."""
    size = tuple(int(s) for s in cfg.image_size)
    teacher = load_teacher(cfg.teacher, size)
    check_teacher(teacher, class_names, cfg.multi_label, cfg.in_chans)
    device = info.device
    net = teacher.model.to(device).eval().requires_grad_(False)
    if cfg.channels_last:
        net.to(memory_format=torch.channels_last)
    adapt = TeacherInput(cfg.mean, cfg.std, teacher.mean, teacher.std, size, teacher.image_size).to(device)
    projection = runner = student_tap = teacher_tap = None
    if cfg.distill_type == "feature":
        student_layer, teacher_layer = default_target_layer(model, cfg.arch), default_target_layer(net, teacher.arch)
        student_tap = FeatureTap(resolve_target_layer(model, student_layer))
        teacher_tap = FeatureTap(resolve_target_layer(net, teacher_layer))
        channels = [_feature_channels(m, tap, adapt if m is net else None, size, cfg.in_chans, device)
                    for m, tap in ((model, student_tap), (net, teacher_tap))]
        projection = FeatureProjection(*channels).to(device)
        runner = projection
        if info.distributed:  # its gradients averaged over the ranks, as the student's
            runner = torch.nn.parallel.DistributedDataParallel(
                projection, device_ids=[device.index] if device.type == "cuda" else None)
        logger.info("--teacher %s: feature distillation from its %s (%d channels) to the student's %s (%d), "
                    "through a 1x1 projection", teacher.name, teacher_layer, channels[1], student_layer, channels[0])
    logger.info("--teacher %s: online %s distillation, alpha %.2f, T %.2f%s", teacher.name, cfg.distill_type,
                cfg.distill_alpha, cfg.distill_temperature,
                "; its input re-normalised/resized to its own preprocessing" if adapt.renormalise or adapt.size
                else "")
    distiller = OnlineTeacher(net, alpha=cfg.distill_alpha, temperature=cfg.distill_temperature,
                              kind=cfg.distill_type, multi_label=cfg.multi_label, adapt=adapt,
                              student_tap=student_tap, teacher_tap=teacher_tap, projection=runner)
    return distiller, projection


@torch.no_grad()
def _feature_channels(model: nn.Module, tap: FeatureTap, adapt: nn.Module | None, size: Sequence[int],
                      in_chans: int, device: torch.device) -> int:
    """The channel count of ``tap``'s layer (one forward of a blank batch of two, in eval mode, mode restored)."""
    was_training = model.training
    x = torch.zeros(2, in_chans, *size, device=device)
    model.eval()(adapt(x) if adapt is not None else x)
    model.train(was_training)
    return int(tap.take().shape[1])
