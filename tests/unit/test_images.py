"""utils/images.py: the one font helper (with the fallback for Pillow < 10.1) and annotate(), which draws
--predict's images with their predictions under them."""
from __future__ import annotations

import torch
from PIL import Image, ImageFont

from utils import images


def _pillow_before_10_1(monkeypatch) -> list[dict]:
    """``ImageFont.load_default`` as Pillow < 10.1 has it: no ``size`` argument. Returns the calls it saw."""
    calls, load_default = [], ImageFont.load_default

    def old_load_default(**kwargs):
        calls.append(kwargs)
        if kwargs:
            raise TypeError("load_default() got an unexpected keyword argument 'size'")
        return load_default()
    monkeypatch.setattr(ImageFont, "load_default", old_load_default)
    return calls


def test_the_font_falls_back_to_the_fixed_size_font_on_old_pillow(monkeypatch):
    calls = _pillow_before_10_1(monkeypatch)
    font = images._font(16)
    assert calls == [{"size": 16}, {}]  # asked for the size first, then took the font without one
    assert font.getlength("seven") > 0


def test_annotate_draws_on_old_pillow_too(monkeypatch):
    _pillow_before_10_1(monkeypatch)
    picture = images.annotate(torch.full((3, 16, 16), 128, dtype=torch.uint8), ["7: 0.93", "1: 0.05"])
    assert isinstance(picture, Image.Image) and picture.width == 256  # 16 px blown up by 16
    assert picture.height == 256 + 2 * images.ANNOTATE_MARGIN + 2 * (images.ANNOTATE_FONT_SIZE + 4)
    band = picture.crop((0, 256, 256, picture.height)).convert("L")
    assert band.getextrema()[0] < 128  # the lines were written in the white band


def test_the_font_has_the_size_asked_for():
    assert images._font(24).getbbox("7")[3] > images._font(12).getbbox("7")[3]
