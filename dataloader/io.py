"""Image decoding to tensors of one :class:`PixelFormat`, the same way everywhere (training, evaluation, predict).

PNG and JPEG go through ``torchvision.io.decode_image`` (fast, no PIL round trip); a 16-bit colour TIFF, which
Pillow reads at 8 bits, through tifffile; anything else, or anything torchvision refuses, through Pillow. Every
image is first RGB at its stored depth (grey, palette and alpha images become RGB, alpha dropped; 16-bit PNG and
TIFF, grey or colour, and 16-bit PGM stay 16-bit), then takes the model's format
(``--in_chans``, ``--bit_depth``, kept in its spec): 8 bits (the default) give uint8, a 16-bit image rounded
to 8 bits; 16 bits give uint16 at full range (an 8-bit image times 257, so that 255 stays white); 1 channel
gives the luma of Pillow's ``L`` conversion, which keeps a grey image exactly as stored.

Every image is checked against one pixel limit (``--max_image_pixels``, Pillow's default) from its header,
before a pixel is decoded: a 100 KB PNG can declare 30000 x 30000 pixels (2.7 GB decoded), and torchvision's
decoder does not apply Pillow's limit.
"""
from __future__ import annotations

import io
import re
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torchvision.io import ImageReadMode, decode_image

from utils.walk import has_extension, visible_files

from .errors import DatasetError  # noqa: F401 - one class for every layout; dataloader.shards imports it from here

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



@dataclass(frozen=True)
class PixelFormat:
    """The decoded tensor's channels (1 grey or 3 RGB) and bits per value (8: uint8, 16: uint16)."""
    channels: int = 3
    bit_depth: int = 8

    def __post_init__(self) -> None:
        if self.channels not in CHANNELS or self.bit_depth not in PEAKS:
            raise ValueError(f"pixel format {self.channels} channels x {self.bit_depth} bits: choose channels "
                             f"{' or '.join(map(str, CHANNELS))} and bit depth {' or '.join(map(str, PEAKS))}")

    @property
    def dtype(self) -> torch.dtype:
        return DTYPES[self.bit_depth]

    @property
    def peak(self) -> int:
        """The value of white: 255 or 65535."""
        return PEAKS[self.bit_depth]


CHANNELS = (1, 3)
PEAKS = {8: 255, 16: 65535}
DTYPES = {8: torch.uint8, 16: torch.uint16}
PEAK_OF_DTYPE = {DTYPES[bits]: peak for bits, peak in PEAKS.items()}  # what BatchPreprocessor divides by
RGB8 = PixelFormat()

_WORKER_PREFIX = re.compile(r"^Caught (\w+) in DataLoader worker process \d+\.\nOriginal Traceback")


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
    """Decode encoded image bytes into a ``3 x H x W`` uint8 tensor (:func:`decode_pixels` in :data:`RGB8`)."""
    return decode_pixels(data, name, max_pixels, RGB8)


def decode_pixels(data: bytes, name: str = "<bytes>", max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
                  fmt: PixelFormat = RGB8) -> torch.Tensor:
    """Decode encoded image bytes into a ``C x H x W`` tensor of ``fmt``; an image of more than ``max_pixels``
    pixels (0: no limit) is refused from its header with :class:`ImageTooLarge`."""
    return to_format(decode_wide(data, name, max_pixels), fmt)


def decode_wide(data: bytes, name: str = "<bytes>", max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> torch.Tensor:
    """Encoded image bytes as a ``3 x H x W`` RGB tensor at the depth stored: uint16 for a 16-bit PNG or TIFF
    (grey or colour) and a 16-bit PGM, else uint8."""
    if not data:
        raise ImageDecodeError(f"{name}: empty file (0 bytes)")
    size = _png_or_jpeg_size(data)
    if size is not None:
        check_pixels(size, name, max_pixels)
        try:
            img = decode_image(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB)
            if img.dtype in PEAK_OF_DTYPE:
                return img
        except RuntimeError:
            pass  # an unusual PNG: Pillow below handles it or says why not
    try:
        with open_image(data, name, max_pixels) as im:
            if is_wide_colour_tiff(im):
                return decode_wide_tiff(data, name, max_pixels)
            im.load()
            return pil_to_wide(im)
    except ImageDecodeError:  # ImageTooLarge included: already one line naming the file
        raise
    except UnidentifiedImageError:  # its message names an in-memory buffer, not the file
        raise ImageDecodeError(f"{name}: cannot decode image (not an image format Pillow can identify)") from None
    except Exception as e:  # Pillow raises many types for bad files
        raise ImageDecodeError(f"{name}: cannot decode image ({type(e).__name__}: {e})") from None


def to_format(image: torch.Tensor, fmt: PixelFormat) -> torch.Tensor:
    """A ``3 x H x W`` uint8/uint16 RGB tensor in ``fmt``: its bit depth (:func:`to_bit_depth`), then grey for
    one channel (:func:`to_grey`)."""
    image = to_bit_depth(image, fmt.bit_depth)
    return to_grey(image) if fmt.channels == 1 else image


def to_bit_depth(image: torch.Tensor, bit_depth: int) -> torch.Tensor:
    """A uint8 or uint16 tensor at ``bit_depth``: 8 -> 16 multiplies by 257 (255 -> 65535), 16 -> 8 rounds
    ``x / 257`` to the nearest integer (no ties: 257 is odd)."""
    if image.dtype == DTYPES[bit_depth]:
        return image
    if bit_depth == 16:
        return (image.to(torch.int32) * 257).to(torch.uint16)
    return ((image.to(torch.int32) + 128) // 257).to(torch.uint8)


def to_grey(image: torch.Tensor) -> torch.Tensor:
    """``3 x H x W`` RGB -> ``1 x H x W`` luma, in integers as Pillow's ``L`` conversion:
    ``(19595 R + 38470 G + 7471 B + 32768) >> 16`` (ITU-R 601; the weights sum to 65536, so a grey image tripled
    to RGB comes back exactly)."""
    weights = torch.tensor([19595, 38470, 7471], dtype=torch.int64).view(3, 1, 1)
    luma = ((image.to(torch.int64) * weights).sum(0, keepdim=True) + 32768) >> 16
    return luma.to(image.dtype)


def pil_to_tensor_rgb(im: Image.Image) -> torch.Tensor:
    """A Pillow image of any mode as a ``3 x H x W`` uint8 RGB tensor."""
    return to_format(pil_to_wide(im), RGB8)


def pil_to_wide(im: Image.Image) -> torch.Tensor:
    """A Pillow image of any mode as a ``3 x H x W`` RGB tensor: uint16 for Pillow's 16-bit grey modes
    (``I;16*``, and ``I`` with values over 255, clipped to 0..65535), else uint8 (palette images via RGBA)."""
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(im).astype(np.int64)
        wide = im.mode.startswith("I;16") or arr.max() > 255
        grey = torch.from_numpy(np.clip(arr, 0, 65535 if wide else 255).astype(np.int32))[None]
        return grey.to(torch.uint16 if wide else torch.uint8).expand(3, -1, -1).contiguous()
    if im.mode != "RGB":
        im = im.convert("RGBA").convert("RGB") if im.mode == "P" else im.convert("RGB")
    return torch.from_numpy(np.array(im, dtype=np.uint8)).permute(2, 0, 1).contiguous()


# TIFF tags read from Pillow's header
BITS_PER_SAMPLE, PHOTOMETRIC, SAMPLE_FORMAT = 258, 262, 339
PHOTOMETRIC_RGB, SAMPLE_UINT = 2, 1


def is_wide_colour_tiff(im: Image.Image) -> bool:
    """Whether Pillow opened (header only) a TIFF of 16-bit unsigned RGB(A) samples: it would read them at 8 bits
    (the high byte), so :func:`decode_wide_tiff` reads it instead."""
    if im.format != "TIFF" or im.mode not in ("RGB", "RGBA", "RGBX"):
        return False
    tags = im.tag_v2
    return (tags.get(PHOTOMETRIC) == PHOTOMETRIC_RGB and set(_per_sample(tags.get(BITS_PER_SAMPLE))) == {16}
            and set(_per_sample(tags.get(SAMPLE_FORMAT, SAMPLE_UINT))) == {SAMPLE_UINT})


def _per_sample(value: object) -> tuple:
    """A TIFF tag's value as a tuple: Pillow gives one value, or one per sample."""
    return value if isinstance(value, tuple) else (value,)


def decode_wide_tiff(data: bytes, name: str, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> torch.Tensor:
    """The first page of a 16-bit colour TIFF as a ``3 x H x W`` uint16 RGB tensor at full range (alpha dropped),
    through tifffile (numpy only: no pickle, no code run from the file). Its header is checked against
    ``max_pixels`` before decoding; a compression tifffile cannot decode without imagecodecs (LZW, JPEG) is one
    line saying so."""
    import tifffile  # imported by the first 16-bit colour TIFF only

    with tifffile.TiffFile(io.BytesIO(data)) as tif:
        page = tif.pages.first
        check_pixels((page.imagewidth, page.imagelength * page.imagedepth), name, max_pixels)
        if page.axes not in ("YXS", "SYX"):
            raise ImageDecodeError(f"{name}: a 16-bit colour TIFF of axes {page.axes}: only one plane of RGB(A) "
                                   f"samples (YXS or SYX) is read")
        if page.compression not in tifffile.TIFF.DECOMPRESSORS:
            raise ImageDecodeError(f"{name}: a 16-bit colour TIFF compressed with {page.compression.name}, which "
                                   f"tifffile reads only with the imagecodecs package: pip install imagecodecs, or "
                                   f"save it uncompressed or with deflate (zlib)")
        try:
            samples = page.asarray(maxworkers=1)
        except Exception as e:  # tifffile: ValueError for short strips, zlib.error for bad deflate data...
            raise ImageDecodeError(f"{name}: cannot decode image (truncated or corrupt 16-bit TIFF data: "
                                   f"{type(e).__name__}: {e})") from None
    rgb = np.moveaxis(samples, page.axes.index("S"), 0)[:3]
    return torch.from_numpy(np.ascontiguousarray(rgb, dtype=np.uint16))
