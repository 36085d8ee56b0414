"""Data: datasets (folders, txt lists, zip archives, csv/jsonl tables, WebDataset shards), transforms, samplers
and loaders."""
from .datasets import LAYOUTS, ClassificationDataset, Columns, DatasetError, read_class_names, resolve_split
from .enhancement import (
    CustomPolicyConfig,
    MixupCutmix,
    MultiScale,
    create_policy,
    make_augmented_grid,
    save_augmented_grid,
)
from .io import ImageDecodeError, decode_rgb
from .loader import BatchPreprocessor, ClassBalancedSampler, RepeatedAugSampler, SeededSampler, create_loader
from .transforms import Letterbox, create_transform

__all__ = ["ClassificationDataset", "Columns", "DatasetError", "LAYOUTS", "read_class_names", "resolve_split",
           "ImageDecodeError", "decode_rgb", "BatchPreprocessor", "SeededSampler", "create_loader",
           "Letterbox", "create_transform", "ClassBalancedSampler", "RepeatedAugSampler", "CustomPolicyConfig",
           "MixupCutmix", "MultiScale", "create_policy", "make_augmented_grid", "save_augmented_grid"]
