"""Data: datasets (folders, txt lists, zip archives), transforms, samplers and loaders."""
from .datasets import (ClassificationDataset, DatasetError, LAYOUTS, read_class_names, resolve_split)
from .io import ImageDecodeError, decode_rgb
from .enhancement import (CustomPolicyConfig, MixupCutmix, MultiScale, create_policy, make_augmented_grid,
                          save_augmented_grid)
from .loader import BatchPreprocessor, ClassBalancedSampler, SeededSampler, create_loader
from .transforms import Letterbox, create_transform

__all__ = ["ClassificationDataset", "DatasetError", "LAYOUTS", "read_class_names", "resolve_split",
           "ImageDecodeError", "decode_rgb", "BatchPreprocessor", "SeededSampler", "create_loader",
           "Letterbox", "create_transform", "ClassBalancedSampler", "CustomPolicyConfig", "MixupCutmix",
           "MultiScale", "create_policy", "make_augmented_grid", "save_augmented_grid"]
