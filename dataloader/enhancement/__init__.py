"""Augmentations: per-image policies (AutoAugment, RandAugment, TrivialAugment, our custom one),
batch-level mixup/cutmix and multi-scale resizing, and a preview grid of what training sees."""
from .mix import MixupCutmix, one_hot_smoothed, sample_beta
from .multiscale import MultiScale
from .policies import AUTOAUGMENT_POLICIES, POLICIES, CustomPolicyConfig, build_custom_policy, create_policy
from .preview import (
    augmented_batch_sheet,
    first_training_batch,
    label_caption,
    make_augmented_grid,
    save_augmented_grid,
)

__all__ = ["AUTOAUGMENT_POLICIES", "POLICIES", "CustomPolicyConfig", "build_custom_policy", "create_policy",
           "MixupCutmix", "one_hot_smoothed", "sample_beta", "MultiScale", "make_augmented_grid",
           "save_augmented_grid", "augmented_batch_sheet", "first_training_batch", "label_caption"]
