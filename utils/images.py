"""Titled images and contact sheets as uint8 RGB arrays (``H x W x 3``), and writing them as PNG.

Drawn with OpenCV (resizing) and Pillow (text): no matplotlib figure per image, so writing hundreds of
pictures stays fast. Used by the augmentation preview (``dataloader/enhancement``), the CAM pictures
(``explain/``) and ``--predict``'s annotated images (``annotate``: an image with lines of text under it).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from utils.atomic import save_image_atomic

WHITE, BLACK, GREEN, RED, GREY = (255, 255, 255), (0, 0, 0), (0, 140, 0), (200, 0, 0), (90, 90, 90)
ANNOTATE_MIN_SIDE, ANNOTATE_MAX_SIDE = 256, 1024  # annotate(): the displayed image's short and long side
ANNOTATE_FONT_SIZE, ANNOTATE_MARGIN = 16, 6


def to_hwc(image: np.ndarray | torch.Tensor) -> np.ndarray:
    """A uint8 image as a contiguous ``H x W x 3`` array (a ``3 x H x W`` tensor or array is transposed, one
    channel is tripled, a uint16 image (``--bit_depth 16``) is shown rounded to 8 bits)."""
    if isinstance(image, torch.Tensor):
        image = image.detach().cpu().numpy()
    image = np.asarray(image)
    if image.ndim == 3 and image.shape[0] in (1, 3) and image.shape[2] not in (1, 3):
        image = image.transpose(1, 2, 0)
    if image.ndim == 2:
        image = image[..., None]
    if image.shape[2] == 1:
        image = np.repeat(image, 3, axis=2)
    if image.dtype == np.uint16:
        image = ((image.astype(np.uint32) + 128) // 257).astype(np.uint8)
    if image.dtype != np.uint8:
        raise ValueError(f"expected a uint8 image, got {image.dtype}")
    return np.ascontiguousarray(image)


def upscale(image: np.ndarray, min_side: int = 128) -> np.ndarray:
    """Enlarge by a whole factor (nearest neighbour: the pixels the model saw) until the short side is >= min_side."""
    factor = max(1, math.ceil(min_side / max(1, min(image.shape[:2]))))
    if factor == 1:
        return image
    return cv2.resize(image, (image.shape[1] * factor, image.shape[0] * factor), interpolation=cv2.INTER_NEAREST)


def _font(size: int) -> ImageFont.ImageFont:
    """Pillow's default font at ``size`` points (Pillow < 10.1 has one fixed-size bitmap font: that one)."""
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: load_default() takes no size
        return ImageFont.load_default()


def add_title(image: np.ndarray, lines: Sequence[str], colors: Sequence[tuple[int, int, int]] | None = None,
              font_size: int = 12) -> np.ndarray:
    """``image`` under a white bar holding ``lines`` of text; the canvas widens if a line is longer than the image."""
    font = _font(font_size)
    widths = [int(math.ceil(font.getlength(line))) for line in lines]
    line_h = font_size + 4
    width = max([image.shape[1], *[w + 8 for w in widths]])
    canvas = Image.new("RGB", (width, image.shape[0] + line_h * len(lines) + 4), WHITE)
    canvas.paste(Image.fromarray(image), ((width - image.shape[1]) // 2, line_h * len(lines) + 4))
    draw = ImageDraw.Draw(canvas)
    for i, (line, w) in enumerate(zip(lines, widths)):
        color = colors[i] if colors else BLACK
        draw.text(((width - w) // 2, 2 + i * line_h), line, fill=color, font=font)
    return np.asarray(canvas)


def save_png(image: np.ndarray, path: str | Path) -> Path:
    """Write a uint8 RGB array as PNG, creating the folder."""
    return save_image_atomic(Image.fromarray(to_hwc(image)), path, optimize=False)


def _fit(image: np.ndarray, tile: int) -> np.ndarray:
    """Resize to fit a ``tile`` x ``tile`` square (aspect kept) and pad it with white."""
    h, w = image.shape[:2]
    scale = tile / max(h, w)
    new_w, new_h = max(1, round(w * scale)), max(1, round(h * scale))
    inter = cv2.INTER_NEAREST if scale >= 1 else cv2.INTER_AREA
    resized = cv2.resize(image, (new_w, new_h), interpolation=inter)
    out = np.full((tile, tile, 3), 255, np.uint8)
    top, left = (tile - new_h) // 2, (tile - new_w) // 2
    out[top:top + new_h, left:left + new_w] = resized
    return out


def contact_sheet(rows: Sequence[tuple[str, Sequence[tuple[np.ndarray, str, bool | None]]]], tile: int = 96,
                  columns: int | None = None, title: str | None = None, font_size: int = 11) -> np.ndarray:
    """A grid with one row per group: the row's name on the left, then its tiles with a caption each.

    ``rows`` holds ``(row name, [(image, caption, correct), ...])``; a caption is green when ``correct``
    is True, red when False, grey when None (unknown truth).
    """
    columns = columns or max([len(tiles) for _, tiles in rows] + [1])
    font = _font(font_size)
    label_w = 8 + max([int(math.ceil(font.getlength(name))) for name, _ in rows] + [0])
    cap_h, pad = font_size + 6, 4
    cell_w, cell_h = tile + pad, tile + cap_h + pad
    top = (font_size + 12) if title else 0
    title_w = 2 * pad + int(math.ceil(_font(font_size + 2).getlength(title))) if title else 0
    width = max(label_w + columns * cell_w + pad, title_w)  # a narrow sheet (--visual_limit) widens for its title
    canvas = Image.new("RGB", (width, top + max(1, len(rows)) * cell_h + pad), WHITE)
    draw = ImageDraw.Draw(canvas)
    if title:
        draw.text((pad, 4), title, fill=BLACK, font=_font(font_size + 2))
    for r, (name, tiles) in enumerate(rows):
        y = top + pad + r * cell_h
        draw.text((4, y + tile // 2 - font_size // 2), name, fill=BLACK, font=font)
        for c, (image, caption, correct) in enumerate(tiles[:columns]):
            x = label_w + c * cell_w
            canvas.paste(Image.fromarray(_fit(to_hwc(image), tile)), (x, y))
            color = GREY if correct is None else (GREEN if correct else RED)
            text = _ellipsize(caption, font, tile)
            draw.text((x + (tile - font.getlength(text)) / 2, y + tile + 2), text, fill=color, font=font)
    return np.asarray(canvas)


def _ellipsize(text: str, font: ImageFont.ImageFont, width: float) -> str:
    if font.getlength(text) <= width:
        return text
    while text and font.getlength(text + "...") > width:
        text = text[:-1]
    return text + "..."


# ---------------------------------------------------------------------------------------------- annotate
def _display_size(width: int, height: int) -> tuple[int, int, Image.Resampling]:
    """A size a person can read: small images blown up by a whole factor (pixels kept sharp), huge ones shrunk."""
    if min(width, height) < ANNOTATE_MIN_SIDE:
        factor = -(-ANNOTATE_MIN_SIDE // min(width, height))
        width, height = width * factor, height * factor
        if max(width, height) <= 4 * ANNOTATE_MAX_SIDE:
            return width, height, Image.Resampling.NEAREST
    scale = min(1.0, ANNOTATE_MAX_SIDE / max(width, height))
    return max(1, round(width * scale)), max(1, round(height * scale)), Image.Resampling.BILINEAR


def annotate(image: torch.Tensor, lines: Sequence[str]) -> Image.Image:
    """A ``3 x H x W`` uint8 image, resized for display, above a white band holding ``lines``."""
    picture = Image.fromarray(image.permute(1, 2, 0).contiguous().numpy())
    width, height, resample = _display_size(picture.width, picture.height)
    picture = picture.resize((width, height), resample)
    font = _font(ANNOTATE_FONT_SIZE)
    line_height = ANNOTATE_FONT_SIZE + 4
    canvas = Image.new("RGB", (width, height + ANNOTATE_MARGIN * 2 + line_height * len(lines)), "white")
    canvas.paste(picture, (0, 0))
    draw = ImageDraw.Draw(canvas)
    for i, line in enumerate(lines):
        draw.text((ANNOTATE_MARGIN, height + ANNOTATE_MARGIN + i * line_height), line, fill="black", font=font)
    return canvas
