"""demos/classifier.py: a fresh process without the project reproduces main.py --evaluation exactly."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dataloader import BatchPreprocessor, create_transform, decode_rgb
from helpers import demo_module

PHOTOS = Path(__import__("sklearn").__file__).parent / "datasets" / "images"  # china.jpg, flower.jpg: 427x640


def _encoded(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **kwargs)
    return buf.getvalue()


def sample_images(tiny_data) -> dict[str, bytes]:
    """Digits PNGs, two real photos (JPEG, 427x640) and a non-square crop in many modes and formats."""
    photo = Image.open(PHOTOS / "china.jpg")
    photo.load()
    crop = photo.crop((10, 20, 110, 57))
    crop.info.pop("icc_profile", None)
    digits = sorted((tiny_data["folder"] / "test").rglob("*.png"))[:3]
    images = {p.name: p.read_bytes() for p in digits}
    images.update({name: (PHOTOS / name).read_bytes() for name in ("china.jpg", "flower.jpg")})
    images.update({
        "rgb.png": _encoded(crop, "PNG"),
        "palette.png": _encoded(crop.convert("P", palette=Image.Palette.ADAPTIVE, colors=16), "PNG", transparency=3),
        "rgba.png": _encoded(crop.convert("RGBA"), "PNG"),
        "grey.png": _encoded(crop.convert("L"), "PNG"),
        "grey_alpha.png": _encoded(crop.convert("LA"), "PNG"),
        "1bit.png": _encoded(crop.convert("1"), "PNG"),
        "16bit.png": _encoded(Image.fromarray(np.asarray(crop.convert("L"), np.uint16) * 257), "PNG"),
        "grey.jpg": _encoded(crop.convert("L"), "JPEG", quality=90),
        "cmyk.jpg": _encoded(crop.convert("CMYK"), "JPEG", quality=90),
        "progressive.jpg": _encoded(crop, "JPEG", quality=50, progressive=True, subsampling=2),
        "rgb.bmp": _encoded(crop, "BMP"),
        "tall.png": _encoded(photo.crop((0, 0, 41, 300)).convert("RGB"), "PNG"),
    })
    return images


@pytest.mark.parametrize("size, resize, crop_pct", [
    ((16, 16), "letterbox", 0.875), ((32, 48), "letterbox", 0.875), ((224, 224), "letterbox", 0.875),
    ((32, 32), "center_crop", 0.875), ((24, 40), "center_crop", 0.875), ((64, 64), "center_crop", 1.0),
])
def test_demo_preprocessing_is_bit_exact(tiny_data, size, resize, crop_pct):
    demo = demo_module()
    meta = {"image_size": list(size), "resize": resize, "crop_pct": crop_pct,
            "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
    ours = demo.Preprocessor(meta)
    project = create_transform(False, size, eval_resize=resize, crop_pct=crop_pct)
    batch_ours, batch_project = [], []
    for name, data in sample_images(tiny_data).items():
        expected, got = project(decode_rgb(data)), ours.load(data)
        assert got.dtype == torch.uint8 and got.shape == expected.shape == (3, *size), name
        assert torch.equal(got, expected), f"{name}: {int((got.int() - expected.int()).abs().max())} levels off"
        batch_ours.append(got)
        batch_project.append(expected)
    normalised = BatchPreprocessor(meta["mean"], meta["std"], torch.device("cpu"))(torch.stack(batch_project))
    assert torch.equal(ours.normalise(torch.stack(batch_ours)), normalised)
