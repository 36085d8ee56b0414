"""Training strategies from the config: the loss, the augmentation policy, and the per-batch hook.

The hook runs inside ``train_one_epoch`` on every batch once it is on the device and normalised:
teacher targets (``--distill``), curriculum weights (``--curriculum_learning``), mixup/cutmix and
multi-scale. Its randomness comes from a generator seeded by (seed, epoch, step), so a resumed run
mixes and rescales exactly as an uninterrupted one.
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from criterions import create_criterion
from dataloader import ClassificationDataset
from dataloader.enhancement import CustomPolicyConfig, MixupCutmix, MultiScale, create_policy
from dataloader.shards import side_folder
from models.finetune import head_parameter_names, lr_scales
from optim import create_optimizer
from utils.loss_weights import is_auto, load_class_weights, load_cost_matrix
from utils.sidefiles import read_rows

from .common import curriculum_path

logger = logging.getLogger(__name__)


def class_weight_spec(cfg: argparse.Namespace) -> Any:
    """``--class_weights`` as :func:`utils.loss_weights.load_class_weights` reads it: one value, or the list."""
    return cfg.class_weights[0] if len(cfg.class_weights) == 1 else cfg.class_weights


def needs_class_counts(cfg: argparse.Namespace) -> bool:
    """Whether :func:`build_criterion` reads the training set's class counts (``--class_weights auto``)."""
    return bool(cfg.weighted_loss and not cfg.cost_matrix and cfg.class_weights and is_auto(class_weight_spec(cfg)))


def build_criterion(cfg: argparse.Namespace, class_counts: Sequence[int], num_samples: int = 0,
                    plain: bool = False) -> nn.Module:
    """``--criterion`` with every enabled modifier; ``--weighted_loss`` takes ``--cost_matrix`` when
    given, else ``--class_weights`` (numbers, a file, or ``auto``: inverse class frequency; with
    ``--multi_label`` per-label positive weights, ``auto`` being negatives / positives of each label over the
    ``num_samples`` training images, as ``torch.nn.BCEWithLogitsLoss``'s ``pos_weight`` advises). ``plain``: the
    head alone (its own parameters, no modifier): the validation loss, comparable across runs."""
    if plain:
        return create_criterion(cfg.criterion, multi_label=cfg.multi_label, asl_gamma_neg=cfg.asl_gamma_neg,
                                asl_gamma_pos=cfg.asl_gamma_pos, asl_clip=cfg.asl_clip)
    num_classes = len(class_counts)
    class_weights = cost_matrix = None
    if cfg.weighted_loss:
        if cfg.cost_matrix:
            cost_matrix = load_cost_matrix(cfg.cost_matrix, num_classes)
        elif cfg.multi_label and is_auto(class_weight_spec(cfg)):
            class_weights = torch.tensor([(num_samples - n) / max(n, 1) for n in class_counts], dtype=torch.float32)
            logger.info("positive weights per label: %s", ", ".join(f"{w:.3g}" for w in class_weights.tolist()))
        else:
            class_weights = load_class_weights(class_weight_spec(cfg), class_counts)
            logger.info("class weights: %s", ", ".join(f"{w:.3g}" for w in class_weights.tolist()))
    return create_criterion(cfg.criterion, label_smoothing=cfg.label_smoothing, class_weights=class_weights,
                            cost_matrix=cost_matrix, ghm=cfg.ghm_loss, ghm_bins=cfg.ghm_bins,
                            ghm_momentum=cfg.ghm_momentum, ohm=cfg.ohm_loss, ohm_ratio=cfg.ohm_ratio,
                            threshold=cfg.threshold_loss, threshold_low=cfg.threshold_low,
                            threshold_high=cfg.threshold_high, focal=cfg.focal_loss, focal_gamma=cfg.focal_gamma,
                            multi_label=cfg.multi_label, asl_gamma_neg=cfg.asl_gamma_neg,
                            asl_gamma_pos=cfg.asl_gamma_pos, asl_clip=cfg.asl_clip,
                            target_threshold=cfg.bce_target_thresh)


def build_optimizer(cfg: argparse.Namespace, model: nn.Module, lr: float, num_classes: int | None = None,
                    also: nn.Module | None = None) -> torch.optim.Optimizer:
    """``--optimizer`` over ``model`` at ``lr`` with the config's decay, momentum and Lookahead settings;
    ``--head_lr_mult`` and ``--layer_decay`` give the head (``num_classes`` outputs) and each layer its LR;
    ``also``: a module trained beside it at ``lr`` (the feature-distillation projection)."""
    scales = None
    if cfg.head_lr_mult != 1.0 or cfg.layer_decay is not None:
        head = head_parameter_names(model, num_classes if num_classes is not None else cfg.num_classes)
        scales = lr_scales(model, head, head_lr_mult=cfg.head_lr_mult, layer_decay=cfg.layer_decay)
        logger.info("per-layer LR factors: head %g, backbone %s", cfg.head_lr_mult,
                    ", ".join(f"{s:.3g}" for s in sorted({v for k, v in scales.items() if k not in head})))
    return create_optimizer(model, cfg.optimizer, lr=lr, weight_decay=cfg.weight_decay, momentum=cfg.momentum,
                            nesterov=cfg.nesterov, lookahead=cfg.lookahead, lookahead_alpha=cfg.lookahead_alpha,
                            lookahead_k=cfg.lookahead_k, lr_scales=scales, also=also)


def build_policy(cfg: argparse.Namespace) -> nn.Module | None:
    """The per-image policy of ``--aug --aug_policy``, or None without ``--aug``."""
    if not cfg.aug:
        return None
    custom = CustomPolicyConfig(hflip=cfg.custom_hflip, vflip=cfg.custom_vflip, rotate=cfg.custom_rotate,
                                crop_min_scale=cfg.custom_crop, blur_prob=cfg.custom_blur,
                                noise_std=cfg.custom_noise, color_jitter=cfg.custom_jitter)
    return create_policy(cfg.aug_policy, autoaugment_policy=cfg.autoaugment_policy,
                         randaugment_n=cfg.randaugment_n, randaugment_m=cfg.randaugment_m, custom=custom)


def soften(probs: torch.Tensor, temperature: float, head: str) -> torch.Tensor:
    """Teacher probabilities at temperature T: ``p ** (1/T)`` renormalised over classes (softmax), or
    per class against ``(1 - p) ** (1/T)`` (sigmoid); T = 1 only renormalises softmax rows."""
    probs = probs.clamp(1e-12, 1.0)
    scaled = probs ** (1.0 / temperature)
    if head == "bce":
        return scaled / (scaled + (1.0 - probs).clamp_min(1e-12) ** (1.0 / temperature))
    return scaled / scaled.sum(dim=1, keepdim=True)


def teacher_files(cfg: argparse.Namespace) -> list[Path]:
    """``--distill_files``, or every ``DATA/distill*.txt``."""
    if cfg.distill_files:
        return [Path(f) for f in cfg.distill_files]
    return sorted(side_folder(cfg.data, cfg.dataset).glob("distill*.txt"))


def _missing_error(what: str, missing: list[str], total: int, fix: str) -> ValueError:
    return ValueError(f"{len(missing)} of {total} training images are missing from {what} "
                      f"(first: {', '.join(missing[:3])}); {fix}")


def load_teacher_targets(cfg: argparse.Namespace, dataset: ClassificationDataset) -> torch.Tensor:
    """``N x C`` averaged, softened teacher probabilities aligned with ``dataset``'s indices.

    An image missing from a teacher file is an error unless ``--distill_missing label``, which gives
    it its one-hot label instead.
    """
    num_classes = len(dataset.class_names)
    files = teacher_files(cfg)
    tables = [read_rows(f, num_classes) for f in files]
    keys = [dataset.key(i) for i in range(len(dataset))]
    targets = F.one_hot(torch.tensor(dataset.targets), num_classes).float()
    missing = [k for k in keys if any(k not in t for t in tables)]
    missing_set = set(missing)
    if missing and cfg.distill_missing == "error":
        raise _missing_error(f"the teacher files {', '.join(map(str, files))}", missing, len(keys),
                             "rerun --knowledge train with every teacher, or pass --distill_missing label")
    for i, k in enumerate(keys):
        if k not in missing_set:
            probs = torch.tensor([t[k] for t in tables]).mean(dim=0, keepdim=True)
            targets[i] = soften(probs, cfg.distill_temperature, cfg.criterion)[0]
    logger.info("distillation: %d teacher file(s), alpha %.2f, T %.2f, %d images on their labels",
                len(files), cfg.distill_alpha, cfg.distill_temperature, len(missing))
    return targets


def load_curriculum(cfg: argparse.Namespace, dataset: ClassificationDataset) -> torch.Tensor:
    """Per-sample loss weights from the curriculum file, aligned with ``dataset``'s indices."""
    path = curriculum_path(cfg)
    if not path.is_file():
        raise FileNotFoundError(f"--curriculum_learning: {path} does not exist; make it with "
                                f"--make_curriculum --resume MODEL.pth, or point --curriculum_file at it")
    table = read_rows(path, 1)
    keys = [dataset.key(i) for i in range(len(dataset))]
    missing = [k for k in keys if k not in table]
    if missing and cfg.curriculum_missing_weight is None:
        raise _missing_error(str(path), missing, len(keys), "remake the curriculum or pass --curriculum_missing_weight")
    default = cfg.curriculum_missing_weight
    weights = torch.tensor([table[k][0] if k in table else default for k in keys], dtype=torch.float32)
    values, counts = weights.unique(return_counts=True)
    logger.info("curriculum %s: loss weights %s for %s training images%s", path,
                " / ".join(f"{v:g}" for v in values.flip(0).tolist()), " / ".join(map(str, counts.flip(0).tolist())),
                f" ({len(missing)} missing from the file, weighted {default:g})" if missing else "")
    return weights


class BatchHook:
    """Per-batch strategies: teacher targets, curriculum weights, mixup/cutmix, multi-scale.

    ``hook(images, target, index, epoch, step) -> (images, target, weight)``; ``target`` becomes soft
    (``N x C``) when distilling or mixing, ``weight`` is None without a curriculum. From epoch
    ``mix_off_epoch`` on (0-based; ``--mixup_off_epoch``) no batch is mixed: a function of the epoch passed in,
    so a run resumed past it does not mix either.
    """

    def __init__(self, *, seed: int, num_classes: int, teacher: torch.Tensor | None = None,
                 distill_alpha: float = 0.5, curriculum: torch.Tensor | None = None,
                 mixer: MixupCutmix | None = None, multiscale: MultiScale | None = None,
                 mix_off_epoch: int | None = None):
        self.seed, self.num_classes, self.mix_off_epoch = seed, num_classes, mix_off_epoch
        self.teacher, self.alpha, self.curriculum = teacher, distill_alpha, curriculum
        self.mixer, self.multiscale = mixer, multiscale

    def generator(self, epoch: int, step: int) -> torch.Generator:
        return torch.Generator().manual_seed((self.seed * 1_000_003 + epoch) * 1_000_033 + step)

    def mixing(self, epoch: int) -> bool:
        """Whether the batches of ``epoch`` are mixed (mixup/cutmix on, and ``epoch`` before ``mix_off_epoch``)."""
        return self.mixer is not None and (self.mix_off_epoch is None or epoch < self.mix_off_epoch)

    def __call__(self, images: torch.Tensor, target: torch.Tensor, index: torch.Tensor, epoch: int,
                 step: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        g = self.generator(epoch, step)
        weight = None
        if self.teacher is not None:
            teacher = self.teacher[index].to(images.device)
            target = self.alpha * teacher + (1 - self.alpha) * F.one_hot(target, self.num_classes).float()
        if self.curriculum is not None:
            weight = self.curriculum[index].to(images.device)
        if self.mixing(epoch):
            images, target, lam = self.mixer.mix(images, target, g)
            if weight is not None:
                weight = lam * weight + (1 - lam) * weight.flip(0)
        if self.multiscale is not None:
            images = self.multiscale(images, g)
        return images, target, weight


def build_batch_hook(cfg: argparse.Namespace, dataset: ClassificationDataset) -> BatchHook | None:
    """The hook for the enabled strategies, or None when none is on."""
    num_classes = len(dataset.class_names)
    teacher = load_teacher_targets(cfg, dataset) if cfg.distill else None
    curriculum = load_curriculum(cfg, dataset) if cfg.curriculum_learning else None
    mixer = MixupCutmix(num_classes, mixup_alpha=cfg.mixup, cutmix_alpha=cfg.cutmix, prob=cfg.mixup_prob,
                        switch_prob=cfg.mix_switch_prob) if (cfg.mixup > 0 or cfg.cutmix > 0) else None
    multiscale = MultiScale(cfg.image_size) if cfg.multi_scale else None
    if teacher is None and curriculum is None and mixer is None and multiscale is None:
        return None
    return BatchHook(seed=cfg.seed, num_classes=num_classes, teacher=teacher, distill_alpha=cfg.distill_alpha,
                     curriculum=curriculum, mixer=mixer, multiscale=multiscale, mix_off_epoch=cfg.mixup_off_epoch)
