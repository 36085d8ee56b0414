"""Drawing an image with lines of text under it (predictions), for a person to look at."""
from __future__ import annotations

from typing import Sequence

import torch
from PIL import Image, ImageDraw, ImageFont

MIN_SIDE, MAX_SIDE = 256, 1024
FONT_SIZE, MARGIN = 16, 6


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has one fixed-size bitmap font
        return ImageFont.load_default()


def _display_size(width: int, height: int) -> tuple[int, int, Image.Resampling]:
    """A size a person can read: small images blown up by a whole factor (pixels kept sharp), huge ones shrunk."""
    if min(width, height) < MIN_SIDE:
        factor = -(-MIN_SIDE // min(width, height))
        width, height = width * factor, height * factor
        if max(width, height) <= 4 * MAX_SIDE:
            return width, height, Image.Resampling.NEAREST
    scale = min(1.0, MAX_SIDE / max(width, height))
    return max(1, round(width * scale)), max(1, round(height * scale)), Image.Resampling.BILINEAR


def annotate(image: torch.Tensor, lines: Sequence[str]) -> Image.Image:
    """A ``3 x H x W`` uint8 image, resized for display, above a white band holding ``lines``."""
    picture = Image.fromarray(image.permute(1, 2, 0).contiguous().numpy())
    width, height, resample = _display_size(picture.width, picture.height)
    picture = picture.resize((width, height), resample)
    font = _font(FONT_SIZE)
    line_height = FONT_SIZE + 4
    canvas = Image.new("RGB", (width, height + MARGIN * 2 + line_height * len(lines)), "white")
    canvas.paste(picture, (0, 0))
    draw = ImageDraw.Draw(canvas)
    for i, line in enumerate(lines):
        draw.text((MARGIN, height + MARGIN + i * line_height), line, fill="black", font=font)
    return canvas
