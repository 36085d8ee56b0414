"""Image decoding to uint8 RGB tensors, the same way everywhere (training, evaluation, predict).

PNG and JPEG go through ``torchvision.io.decode_image`` (fast, no PIL round trip); anything else, or
anything it refuses, through Pillow. Grayscale, palette and alpha images all come out as 3-channel RGB.
"""
from __future__ import annotations

import io
import warnings

import numpy as np
import torch
from PIL import Image
from torchvision.io import ImageReadMode, decode_image

# torchvision 0.29 deprecates its decoders in favour of TorchCodec, but they remain the fastest way to
# turn PNG/JPEG bytes into uint8 tensors here; the warning would otherwise repeat once per image.
warnings.filterwarnings("ignore", message="The image decoding and encoding capabilities of TorchVision",
                        category=DeprecationWarning)

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp", ".gif")


class ImageDecodeError(RuntimeError):
    """An image could not be decoded; the message names the file and the reason."""


def decode_rgb(data: bytes, name: str = "<bytes>") -> torch.Tensor:
    """Decode encoded image bytes into a ``3 x H x W`` uint8 tensor."""
    if not data:
        raise ImageDecodeError(f"{name}: empty file (0 bytes)")
    if data[:4] == b"\x89PNG" or data[:2] == b"\xff\xd8":
        try:
            img = decode_image(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB)
            if img.dtype == torch.uint8:
                return img
        except RuntimeError:
            pass  # e.g. 16-bit or unusual PNG: Pillow below handles it or says why not
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            return pil_to_tensor_rgb(im)
    except Exception as e:  # Pillow raises many types for bad files
        raise ImageDecodeError(f"{name}: cannot decode image ({type(e).__name__}: {e})") from None


def pil_to_tensor_rgb(im: Image.Image) -> torch.Tensor:
    """A Pillow image of any mode as a ``3 x H x W`` uint8 RGB tensor."""
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(im, dtype=np.float64)
        peak = 65535.0 if im.mode.startswith("I;16") or arr.max() > 255 else 255.0
        im = Image.fromarray(np.clip(arr / peak * 255.0 + 0.5, 0, 255).astype(np.uint8))
    if im.mode != "RGB":
        im = im.convert("RGBA").convert("RGB") if im.mode == "P" else im.convert("RGB")
    return torch.from_numpy(np.array(im, dtype=np.uint8)).permute(2, 0, 1).contiguous()
