"""Heatmap overlays as uint8 RGB arrays (``H x W x 3``): a ``[0, 1]`` heatmap coloured and blended over its image.

Drawn with OpenCV (colour map, blending, resizing): no matplotlib figure per image, so writing hundreds
of overlays stays fast. Titles and contact sheets are in ``utils/images.py``.
"""
from __future__ import annotations

import cv2
import numpy as np
import torch

from utils.images import to_hwc


def colorize(heatmap: np.ndarray, colormap: int = cv2.COLORMAP_JET) -> np.ndarray:
    """A ``[0, 1]`` heatmap as an RGB image through an OpenCV colour map (blue = 0, red = 1 for JET)."""
    scaled = np.uint8(np.clip(np.nan_to_num(heatmap), 0.0, 1.0) * 255.0 + 0.5)
    return cv2.cvtColor(cv2.applyColorMap(scaled, colormap), cv2.COLOR_BGR2RGB)


def overlay_heatmap(image: np.ndarray | torch.Tensor, heatmap: np.ndarray, alpha: float = 0.5,
                    colormap: int = cv2.COLORMAP_JET) -> np.ndarray:
    """``image`` blended with the coloured ``heatmap`` (resized bilinearly to the image when sizes differ)."""
    image = to_hwc(image)
    heatmap = np.asarray(heatmap, dtype=np.float32)
    if heatmap.shape != image.shape[:2]:
        heatmap = cv2.resize(heatmap, (image.shape[1], image.shape[0]), interpolation=cv2.INTER_LINEAR)
    blended = (1.0 - alpha) * image.astype(np.float32) + alpha * colorize(heatmap, colormap).astype(np.float32)
    return np.uint8(np.clip(blended + 0.5, 0, 255))
