"""Data: datasets (folders, txt lists, zip archives), transforms, samplers and loaders."""
from .datasets import (ClassificationDataset, DatasetError, LAYOUTS, read_class_names, resolve_split)
from .io import ImageDecodeError, decode_rgb
from .loader import BatchPreprocessor, SeededSampler, create_loader
from .transforms import Letterbox, create_transform

__all__ = ["ClassificationDataset", "DatasetError", "LAYOUTS", "read_class_names", "resolve_split",
           "ImageDecodeError", "decode_rgb", "BatchPreprocessor", "SeededSampler", "create_loader",
           "Letterbox", "create_transform"]
