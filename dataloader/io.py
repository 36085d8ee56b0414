"""Image decoding to uint8 RGB tensors, the same way everywhere (training, evaluation, predict).

PNG and JPEG go through ``torchvision.io.decode_image`` (fast, no PIL round trip); anything else, or
anything it refuses, through Pillow. Grayscale, palette and alpha images all come out as 3-channel RGB.

Every image is checked against one pixel limit (``--max_image_pixels``, Pillow's default) from its header,
before a pixel is decoded: a 100 KB PNG can declare 30000 x 30000 pixels (2.7 GB decoded), and torchvision's
decoder does not apply Pillow's limit.
"""
from __future__ import annotations

import io
import re
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torchvision.io import ImageReadMode, decode_image

from utils.walk import has_extension, visible_files

# torchvision 0.29 deprecates its decoders in favour of TorchCodec, but they remain the fastest way to
# turn PNG/JPEG bytes into uint8 tensors here; the warning would otherwise repeat once per image.
warnings.filterwarnings("ignore", message="The image decoding and encoding capabilities of TorchVision",
                        category=DeprecationWarning)

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp", ".gif")


def is_image_name(name: str) -> bool:
    """Whether a file name has an image extension (any case)."""
    return has_extension(name, IMG_EXTENSIONS)


def list_images(folder: str | Path) -> list[Path]:
    """Every image under ``folder``, recursively, as every image-folder reader of the project sees them
    (hidden names skipped, symlinks followed, deterministic order: see ``utils/walk.py``)."""
    return visible_files(folder, IMG_EXTENSIONS)


# Pillow's default limit (89,478,485 pixels: a 1 GiB image at 4 bytes per pixel, / 3), taken before anything
# changes it. ``--max_image_pixels`` (0 = no limit) replaces it in every reader of the project.
DEFAULT_MAX_IMAGE_PIXELS: int = Image.MAX_IMAGE_PIXELS or 89_478_485
# Headers, ICC profiles and EXIF on top of 4 bytes per pixel (RGBA without compression, the largest 8-bit
# encoding): the most an encoded image of the allowed size needs, so a zip member bigger than that is refused
# from the archive's directory before a byte of it is inflated.
ENCODED_SLACK_BYTES = 16 * 2**20
PIXEL_FLAG = "--max_image_pixels"

_WORKER_PREFIX = re.compile(r"^Caught (\w+) in DataLoader worker process \d+\.\nOriginal Traceback")


class DatasetError(ValueError):
    """The dataset on disk is malformed; the message says where and how to fix it."""


class ImageDecodeError(RuntimeError):
    """An image could not be decoded; the message names the file and the reason.

    A DataLoader worker's exception is re-raised in the main process as ``type(message)`` with the message
    replaced by ``"Caught <type> in DataLoader worker process N. Original Traceback ..."``
    (``torch._utils.ExceptionWrapper.reraise``). The constructor keeps only the original message, so that
    ``-j 2`` reports the same one line as ``-j 0``.
    """

    def __init__(self, message: str = ""):
        super().__init__(_unwrap_worker_message(message, type(self).__name__))


def _unwrap_worker_message(message: str, type_name: str) -> str:
    match = _WORKER_PREFIX.match(message) if isinstance(message, str) else None
    if match is None:
        return message
    last = [line for line in message.splitlines()
            if re.match(rf"^(?:[\w.]+\.)?{re.escape(match.group(1))}: ", line)]
    return last[-1].split(": ", 1)[1] if last else message


class ImageTooLarge(ImageDecodeError):
    """An image (or zip member) is over the pixel limit: refused from its header, before decoding."""


def max_encoded_bytes(max_pixels: int) -> int | None:
    """The largest encoded file allowed with ``max_pixels`` (4 bytes per pixel plus slack); None: no limit."""
    return max_pixels * 4 + ENCODED_SLACK_BYTES if max_pixels else None


def check_pixels(size: tuple[int, int], name: str, max_pixels: int) -> None:
    """Raise :class:`ImageTooLarge` when a ``(width, height)`` image is over ``max_pixels`` (0: no limit)."""
    width, height = size
    if max_pixels and width * height > max_pixels:
        raise ImageTooLarge(f"{name}: {width}x{height} pixels ({width * height / 1e6:.1f} megapixels) is over the "
                            f"limit of {max_pixels} pixels, a possible decompression bomb; it is not decoded "
                            f"(raise the limit with {PIXEL_FLAG} N, 0 = no limit)")


def check_size(actual: int, name: str, max_pixels: int) -> None:
    """Raise :class:`ImageTooLarge` when an encoded image of ``actual`` bytes is over what ``max_pixels`` allows."""
    limit = max_encoded_bytes(max_pixels)
    if limit is not None and actual > limit:
        raise ImageTooLarge(f"{name}: {actual} bytes uncompressed, over the limit of {limit} bytes for an image "
                            f"(4 bytes per pixel of {PIXEL_FLAG} {max_pixels} + {ENCODED_SLACK_BYTES // 2**20} MiB); "
                            f"it is not read (raise {PIXEL_FLAG}, 0 = no limit)")


def _png_or_jpeg_size(data: bytes | memoryview) -> tuple[int, int] | None:
    """``(width, height)`` from a PNG's IHDR or a JPEG's SOF marker; None when not found."""
    if bytes(data[:8]) == b"\x89PNG\r\n\x1a\n" and bytes(data[12:16]) == b"IHDR" and len(data) >= 24:
        return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    if bytes(data[:2]) != b"\xff\xd8":
        return None
    i, n = 2, len(data)
    while i + 9 <= n:
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD8:  # markers without a length
            i += 2
            continue
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):  # start of frame: P, Y, X
            return int.from_bytes(data[i + 7:i + 9], "big"), int.from_bytes(data[i + 5:i + 7], "big")
        i += 2 + int.from_bytes(data[i + 2:i + 4], "big")
    return None


@contextmanager
def open_image(data: bytes | memoryview, name: str,
               max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> Iterator[Image.Image]:
    """A Pillow image of ``data``, opened lazily (header only) and checked against ``max_pixels`` before
    anything is decoded. Pillow's own bomb check (a warning up to twice its limit, an error above) is off
    meanwhile: this limit replaces it, so that ``--max_image_pixels`` can also raise it."""
    saved = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None
    try:
        with Image.open(io.BytesIO(data)) as im:
            check_pixels(im.size, name, max_pixels)
            yield im
    finally:
        Image.MAX_IMAGE_PIXELS = saved


def check_header(data: bytes | memoryview, name: str, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> None:
    """Raise :class:`ImageTooLarge` when the header of ``data`` gives more than ``max_pixels`` pixels.

    PNG and JPEG sizes are read directly from their headers (microseconds); other formats through Pillow's
    lazy open. A header that cannot be read is left for the decoder to report."""
    if not max_pixels:
        return
    size = _png_or_jpeg_size(data)
    if size is not None:
        check_pixels(size, name, max_pixels)
        return
    try:
        with open_image(data, name, max_pixels):
            pass
    except ImageTooLarge:
        raise
    except Exception:  # not an image Pillow knows: decoding says why
        pass


def decode_rgb(data: bytes, name: str = "<bytes>", max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> torch.Tensor:
    """Decode encoded image bytes into a ``3 x H x W`` uint8 tensor; an image of more than ``max_pixels``
    pixels (0: no limit) is refused from its header with :class:`ImageTooLarge`."""
    if not data:
        raise ImageDecodeError(f"{name}: empty file (0 bytes)")
    size = _png_or_jpeg_size(data)
    if size is not None:
        check_pixels(size, name, max_pixels)
        try:
            img = decode_image(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB)
            if img.dtype == torch.uint8:
                return img
        except RuntimeError:
            pass  # e.g. 16-bit or unusual PNG: Pillow below handles it or says why not
    try:
        with open_image(data, name, max_pixels) as im:
            im.load()
            return pil_to_tensor_rgb(im)
    except ImageTooLarge:
        raise
    except UnidentifiedImageError:  # its message names an in-memory buffer, not the file
        raise ImageDecodeError(f"{name}: cannot decode image (not an image format Pillow can identify)") from None
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
