#!/usr/bin/env python
"""Classify images with an exported model (TorchScript ``.pt``, ONNX ``.onnx`` fp32 or int8, OpenVINO IR
``.xml`` fp32 or int8), without the project.

    python demos/classifier.py MODEL IMAGE_OR_FOLDER [--topk 5]
                               [--backend auto|torchscript|onnxruntime|openvino] [--max_image_pixels N]

It imports only torch, numpy, Pillow and (for ``.onnx``) onnxruntime or (for ``.xml``) openvino; a 16-bit
colour PNG also imports torchvision and a 16-bit colour TIFF tifffile, which the project decodes them with. The
export carries its metadata (class names, input size, resize mode, mean/std, head), and the preprocessing below
reproduces the project's evaluation pipeline bit for bit:

1. decode any image as ``dataloader/io.py`` does into the export's ``in_chans`` (3: RGB, palette via RGBA;
   1: the luma of Pillow's ``L``) and ``bit_depth`` (8: a 16-bit image rounded; 16: kept, 8-bit images x 257).
   16-bit PNG and TIFF, grey or colour, are read at full range: grey by Pillow, colour (which Pillow reads at
   8 bits) by torchvision (PNG) and tifffile (TIFF), as the project reads them;
2. letterbox (resize keeping the aspect ratio, centred, padded with 0) or centre crop, resizing the
   integer image with the export's antialiased interpolation (bilinear, or bicubic for weights trained
   so) exactly as torchvision does on this CPU;
3. ``(x / peak - mean) / std`` in float32 (peak 255, or 65535 at 16 bits), in the same operation order as
   the project.

A multi-label export (its metadata's ``multi_label``) gives each image a label set: the classes whose sigmoid
probability is >= their entry of the metadata's ``thresholds`` (tuned per class by ``--tune_thresholds``, else
0.5), highest first; ``--json`` prints ``{"path", "labels": [{"name", "score"}], "scores": {name: score}}``
and the text lines ``path: name score, ...`` (``(no label)`` for an empty set); ``--topk`` is for single-label
exports.

A calibrated export (``main.py --calibrate``, then ``--jit``/``--onnx``) carries its softmax ``temperature``:
the probabilities are ``softmax(logits / temperature)`` (exports without one: 1). ``--reject_below P`` answers
``unknown`` for an image whose top probability is below P (single-label exports): the text line reads
``path: unknown (name p, ...)`` and ``--json`` adds ``"answer"`` (the top class or ``unknown``).

``--backend auto`` runs ``.onnx`` files (``model.onnx``, ``model.int8.onnx``) in ONNX Runtime, ``.xml``
files (``model.xml``, ``model.int8.xml``, with their ``.bin``) in OpenVINO and anything else as TorchScript.
An int8 file's metadata holds its ``quantization`` settings; its predictions agree with the fp32 file's at
the rate the export measured (``main.py --quantize int8`` prints it), not always. Folders are
read recursively; an empty one is an error. An image of more than ``--max_image_pixels`` pixels (Pillow's
default; 0 = no limit) is refused from its header before decoding, as the project refuses it. To use it
from another program::

    from classifier import Classifier            # with demos/ on sys.path
    clf = Classifier("export/model.onnx")
    clf.predict(["cat.jpg", "dog.png"], topk=3)   # [[("cat", 0.97), ...], ...]
    clf.predict_labels(["street.jpg"])            # multi-label: [[("car", 0.91), ("person", 0.64)]]
"""
from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import platform
import sys
import warnings
import zipfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp", ".gif")
METADATA_FILE = "metadata.json"
BACKEND_BY_SUFFIX = {".onnx": "onnxruntime", ".xml": "openvino"}
OPENVINO_METADATA_KEY = ["classifier", "metadata"]  # where main.py --openvino puts the metadata JSON in rt_info
OPENVINO_WEIGHTS_HASH_KEY = ["classifier", "bin_sha256"]  # ... and the sha256 of the .bin written with the .xml
ImageSource = Union[str, os.PathLike, bytes, Image.Image]
DEFAULT_MAX_IMAGE_PIXELS = 89_478_485  # Pillow's default, as in the project (for a desktop, not a service)


# --- decoding: the same pixels as dataloader/io.py ----------------------------------------------------

def to_rgb_tensor(im: Image.Image, in_chans: int = 3, bit_depth: int = 8) -> torch.Tensor:
    """A Pillow image of any mode as an ``in_chans x H x W`` tensor of ``bit_depth`` bits (uint8: 16-bit rounded
    to 8; uint16: 8-bit times 257), palette via RGBA, grey as Pillow's ``L`` luma."""
    return to_format(pil_to_wide(im), in_chans, bit_depth)


def pil_to_wide(im: Image.Image) -> torch.Tensor:
    """A Pillow image as a ``3 x H x W`` RGB tensor at its depth: uint16 for 16-bit grey, else uint8."""
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(im).astype(np.int64)
        wide = im.mode.startswith("I;16") or arr.max() > 255
        grey = torch.from_numpy(np.clip(arr, 0, 65535 if wide else 255).astype(np.int32))[None]
        return grey.to(torch.uint16 if wide else torch.uint8).expand(3, -1, -1)
    if im.mode != "RGB":
        im = im.convert("RGBA").convert("RGB") if im.mode == "P" else im.convert("RGB")
    return torch.from_numpy(np.array(im, dtype=np.uint8)).permute(2, 0, 1)


def to_format(image: torch.Tensor, in_chans: int = 3, bit_depth: int = 8) -> torch.Tensor:
    """A ``3 x H x W`` uint8/uint16 RGB tensor at ``bit_depth`` (x 257 up, ``round(x / 257)`` down), then grey
    for one channel."""
    if image.dtype == (torch.uint16 if bit_depth == 16 else torch.uint8) and in_chans == 3:
        return image.contiguous()  # already in format: no int32 copy (12 bytes a pixel) of a large image
    wide_image = image.to(torch.int32)
    if image.dtype == torch.uint8 and bit_depth == 16:
        wide_image = wide_image * 257
    elif image.dtype == torch.uint16 and bit_depth == 8:
        wide_image = (wide_image + 128) // 257
    if in_chans == 1:  # Pillow's L: the weights sum to 65536, so a grey image comes back exactly
        weights = torch.tensor([19595, 38470, 7471], dtype=torch.int64).view(3, 1, 1)
        wide_image = ((wide_image.to(torch.int64) * weights).sum(0, keepdim=True) + 32768) >> 16
    return wide_image.to(torch.uint16 if bit_depth == 16 else torch.uint8).contiguous()


def is_wide_colour_png(data: bytes) -> bool:
    """Whether ``data`` is a PNG of 16-bit samples with colour or alpha (IHDR bit depth 16, colour type 2, 4 or
    6), which Pillow reads at 8 bits."""
    return data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) >= 26 and data[24] == 16 and data[25] in (2, 4, 6)


def decode_wide_png(data: bytes) -> torch.Tensor:
    """A 16-bit PNG as a ``3 x H x W`` uint16 RGB tensor, decoded by torchvision as the project decodes it."""
    try:
        from torchvision.io import ImageReadMode, decode_image
    except ImportError:
        raise ImportError("a 16-bit colour PNG is read at full range by torchvision, as the project reads it: "
                          "pip install torchvision") from None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torchvision 0.29's notice about TorchCodec
        return decode_image(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB)


def is_wide_colour_tiff(im: Image.Image) -> bool:
    """Whether Pillow opened (header only) a TIFF of 16-bit unsigned RGB(A) samples, which it reads at 8 bits
    (tags BitsPerSample 258, Photometric 262 = RGB, SampleFormat 339 = unsigned)."""
    if im.format != "TIFF" or im.mode not in ("RGB", "RGBA", "RGBX"):
        return False
    per_sample = [v if isinstance(v, tuple) else (v,) for v in (im.tag_v2.get(258), im.tag_v2.get(339, 1))]
    return im.tag_v2.get(262) == 2 and set(per_sample[0]) == {16} and set(per_sample[1]) == {1}


def decode_wide_tiff(data: bytes, max_pixels: int) -> torch.Tensor:
    """The first page of a 16-bit colour TIFF as a ``3 x H x W`` uint16 RGB tensor (alpha dropped), through
    tifffile as the project reads it; its header checked against ``max_pixels`` before decoding."""
    try:
        import tifffile
    except ImportError:
        raise ImportError("a 16-bit colour TIFF is read at full range by tifffile, as the project reads it: "
                          "pip install tifffile") from None
    with tifffile.TiffFile(io.BytesIO(data)) as tif:
        page = tif.pages.first
        _check_pixels(page.imagewidth, page.imagelength * page.imagedepth, max_pixels)
        if page.axes not in ("YXS", "SYX"):
            raise ValueError(f"a 16-bit colour TIFF of axes {page.axes}: only one plane of RGB(A) samples is read")
        if page.compression not in tifffile.TIFF.DECOMPRESSORS:
            raise ValueError(f"a 16-bit colour TIFF compressed with {page.compression.name}, which tifffile reads "
                             f"only with the imagecodecs package: pip install imagecodecs")
        samples = page.asarray(maxworkers=1)
    rgb = np.moveaxis(samples, page.axes.index("S"), 0)[:3]
    return torch.from_numpy(np.ascontiguousarray(rgb, dtype=np.uint16))


class ImageTooLarge(ValueError):
    """An image declares more pixels than the limit: refused from its header, never decoded."""


@contextmanager
def own_pixel_check() -> Iterator[None]:
    """Pillow's own bomb check (a warning over ``Image.MAX_IMAGE_PIXELS``, an error over twice that) off for
    a whole run: set once at start-up by a program (this demo's and serve.py's ``main``), never from the
    threads that decode, so that the header check of :func:`read_image` with ``--max_image_pixels`` is the only
    one, and can also be above Pillow's. Without it Pillow's check runs first (its refusal: ImageTooLarge)."""
    saved, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
    try:
        yield
    finally:
        Image.MAX_IMAGE_PIXELS = saved


@contextmanager
def _open_checked(data: bytes, max_pixels: int) -> Iterator[Image.Image]:
    """A Pillow image opened lazily (header only) and refused over ``max_pixels`` before it is decoded."""
    try:
        opened = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as e:  # Pillow's own check, when no own_pixel_check() is in force
        raise ImageTooLarge(f"{e} (Pillow's limit); not decoded") from None
    with opened as im:
        _check_pixels(*im.size, max_pixels)
        yield im


def _check_pixels(width: int, height: int, max_pixels: int) -> None:
    if max_pixels and width * height > max_pixels:
        raise ImageTooLarge(f"{width}x{height} pixels is over the limit of {max_pixels} pixels, a possible "
                            f"decompression bomb; not decoded (raise it with --max_image_pixels N, 0 = no limit)")


def read_image(source: ImageSource, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS, in_chans: int = 3,
               bit_depth: int = 8) -> torch.Tensor:
    """Decode a path, encoded bytes or a Pillow image to an ``in_chans x H x W`` tensor (uint8 RGB unless told);
    encoded images of more than ``max_pixels`` pixels (0: no limit) are refused from their header with
    ImageTooLarge. 16-bit colour PNG and TIFF, which Pillow reads at 8 bits, go through torchvision and tifffile
    (a Pillow image passed in has already lost those bits)."""
    if isinstance(source, Image.Image):
        return to_rgb_tensor(source, in_chans, bit_depth)
    data = source if isinstance(source, bytes) else Path(source).read_bytes()
    if not data:
        raise ValueError("empty file (0 bytes)")
    with _open_checked(data, max_pixels) as im:
        if is_wide_colour_png(data):
            image = decode_wide_png(data)
        elif is_wide_colour_tiff(im):
            image = decode_wide_tiff(data, max_pixels)
        else:
            im.load()
            image = pil_to_wide(im)
    return to_format(image, in_chans, bit_depth)


# --- geometry: the same pixels as dataloader/transforms.py (torchvision v2 on uint8 tensors) ------------

def _native_uint8_resize() -> bool:
    # torchvision resizes uint8 directly on CPUs with these kernels, else via float32 and rounding.
    return (torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512")
            or platform.machine() in ("aarch64", "arm64"))


def resize_uint8(image: torch.Tensor, height: int, width: int, mode: str = "bilinear") -> torch.Tensor:
    """Antialiased ``mode`` (bilinear or bicubic) resize of a ``C x H x W`` uint8 tensor, as
    ``torchvision.transforms.v2.functional.resize``: bicubic always has a uint8 kernel on the CPU. A uint16
    tensor is resized in float32 and truncated back, as torchvision does."""
    if tuple(image.shape[-2:]) == (height, width):
        return image
    batch = image.unsqueeze(0)
    if image.dtype == torch.uint16:
        return F.interpolate(batch.float(), size=[height, width], mode=mode, align_corners=False,
                             antialias=True).to(torch.uint16)[0]
    if mode == "bicubic" or _native_uint8_resize():
        out = F.interpolate(batch, size=[height, width], mode=mode, align_corners=False, antialias=True)
    else:
        out = F.interpolate(batch.float(), size=[height, width], mode=mode, align_corners=False,
                            antialias=True).round_().to(torch.uint8)
    return out[0]


def letterbox(image: torch.Tensor, size: Sequence[int], mode: str = "bilinear") -> torch.Tensor:
    """Resize keeping the aspect ratio to fit ``size``, then pad with 0 to exactly ``size``, centred."""
    h, w = image.shape[-2:]
    out_h, out_w = size
    scale = min(out_h / h, out_w / w)
    new_h, new_w = max(1, round(h * scale)), max(1, round(w * scale))
    image = resize_uint8(image, new_h, new_w, mode)
    if (new_h, new_w) == (out_h, out_w):
        return image
    top, left = (out_h - new_h) // 2, (out_w - new_w) // 2
    out = image.new_zeros((image.shape[0], out_h, out_w))
    out[:, top:top + new_h, left:left + new_w] = image
    return out


def center_crop(image: torch.Tensor, size: Sequence[int], crop_pct: float, mode: str = "bilinear") -> torch.Tensor:
    """Resize the short side to ``min(size) / crop_pct`` (truncated), then take the centre ``size``."""
    h, w = image.shape[-2:]
    short_target = int(min(size) / crop_pct)
    short, long = (w, h) if w <= h else (h, w)
    new_short, new_long = short_target, int(short_target * long / short)
    new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
    image = resize_uint8(image, new_h, new_w, mode)
    crop_h, crop_w = size
    if crop_h > new_h or crop_w > new_w:  # pad first, as torchvision's center_crop does
        pad_l, pad_t = max(crop_w - new_w, 0) // 2, max(crop_h - new_h, 0) // 2
        pad_r, pad_b = (max(crop_w - new_w, 0) + 1) // 2, (max(crop_h - new_h, 0) + 1) // 2
        image = F.pad(image, [pad_l, pad_r, pad_t, pad_b], value=0)
        new_h, new_w = image.shape[-2:]
    top, left = int(round((new_h - crop_h) / 2.0)), int(round((new_w - crop_w) / 2.0))
    return image[:, top:top + crop_h, left:left + crop_w]


GEOMETRY = {
    # exports from before the interpolation was recorded resized bilinear
    "letterbox": lambda image, meta: letterbox(image, meta["image_size"], meta.get("interpolation", "bilinear")),
    "center_crop": lambda image, meta: center_crop(image, meta["image_size"], meta["crop_pct"],
                                                   meta.get("interpolation", "bilinear")),
}
ACTIVATIONS = {
    "softmax": lambda logits: logits.float().softmax(dim=1),
    "bce": lambda logits: logits.float().sigmoid(),
    "asl": lambda logits: logits.float().sigmoid(),  # the asymmetric loss: per-class sigmoid, as bce
}
DEFAULT_THRESHOLD = 0.5  # a multi-label export's decision threshold of a class that has none
UNKNOWN = "unknown"  # --reject_below's answer for an image whose top probability is below it


# --- backends ---------------------------------------------------------------------------------------

class TorchScriptBackend:
    """A TorchScript export, optimised for inference on this machine when loaded."""

    def __init__(self, path: Path, threads: int | None = None):
        if threads:
            torch.set_num_threads(threads)
        extra = {METADATA_FILE: ""}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # TorchScript's deprecation notices
            module = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
            self.module = torch.jit.optimize_for_inference(module)
        self.metadata = json.loads(extra[METADATA_FILE] or "{}")

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return self.module(batch)


ONNX_INPUT_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16}


class OnnxRuntimeBackend:
    """An ONNX export in an ONNX Runtime CPU session with every graph optimisation on."""

    def __init__(self, path: Path, threads: int | None = None):
        import onnxruntime as ort
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        graph_input = self.session.get_inputs()[0]
        self.input_name = graph_input.name
        # the dtype the graph takes, read from the file: float32 for main.py's exports, fp16 ones included
        # (model.fp16.onnx casts inside); float16 for a graph whose input is fp16 (e.g. converted elsewhere)
        self.input_dtype = ONNX_INPUT_TYPES.get(graph_input.type)
        if self.input_dtype is None:
            raise ValueError(f"{path}: its input {graph_input.name!r} is {graph_input.type}; the demo feeds "
                             f"{' or '.join(ONNX_INPUT_TYPES)} images")
        props = self.session.get_modelmeta().custom_metadata_map
        self.metadata = {k: json.loads(v) for k, v in props.items()}

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        logits = self.session.run(None, {self.input_name: batch.numpy().astype(self.input_dtype, copy=False)})[0]
        return torch.from_numpy(logits.astype(np.float32, copy=False))


class OpenVinoBackend:
    """An OpenVINO IR (``.xml`` + ``.bin``) compiled for the CPU, computing in fp32 where the file is fp32
    (OpenVINO would pick bf16 on CPUs that have it) and in int8 where it is quantized. The ``.bin`` must be
    the one the ``.xml`` was written with (its sha256, recorded by main.py --openvino): a kill between the
    two renames of a re-export leaves a new ``.xml`` beside the old ``.bin``."""

    def __init__(self, path: Path, threads: int | None = None):
        import openvino as ov
        core = ov.Core()
        weights = path.with_suffix(".bin")
        try:
            model = core.read_model(str(path))
        except RuntimeError as e:  # OpenVINO's reason is its last line; the first names its own source file
            reason = [line.strip() for line in str(e).splitlines() if line.strip()][-1:] or [type(e).__name__]
            raise ValueError(f"OpenVINO cannot read the IR {path} with its weights {weights.name}: {reason[0]}; "
                             f"export it again with main.py --openvino") from None
        if model.has_rt_info(OPENVINO_WEIGHTS_HASH_KEY):
            expected, got = model.get_rt_info(OPENVINO_WEIGHTS_HASH_KEY).astype(str), sha256_of(weights)
            if got != expected:
                raise ValueError(f"{weights} is not the weights file of {path} (its sha256 is {got[:16]}..., the "
                                 f".xml records {expected[:16]}...): an export was interrupted between writing "
                                 f"the two; export it again with main.py --openvino")
        config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY"}
        if threads:
            config["INFERENCE_NUM_THREADS"] = int(threads)
        self.request = core.compile_model(model, "CPU", config).create_infer_request()
        self.metadata = (json.loads(model.get_rt_info(OPENVINO_METADATA_KEY).astype(str))
                         if model.has_rt_info(OPENVINO_METADATA_KEY) else {})

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        self.request.infer({0: batch.numpy()})
        return torch.from_numpy(self.request.get_output_tensor(0).data.copy())


def sha256_of(path: Path) -> str:
    """The sha256 (hex) of the file at ``path``, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(2**20), b""):
            digest.update(chunk)
    return digest.hexdigest()


BACKENDS = {"torchscript": TorchScriptBackend, "onnxruntime": OnnxRuntimeBackend, "openvino": OpenVinoBackend}
REQUIRED_METADATA = ("class_names", "image_size", "resize", "mean", "std")


class Preprocessor:
    """The project's evaluation preprocessing, configured by an export's metadata."""

    def __init__(self, metadata: dict[str, Any], max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS):
        if metadata.get("resize") not in GEOMETRY:
            raise ValueError(f"unsupported resize {metadata.get('resize')!r}; this demo knows {', '.join(GEOMETRY)}")
        if metadata.get("interpolation", "bilinear") not in ("bilinear", "bicubic"):
            raise ValueError(f"unsupported interpolation {metadata['interpolation']!r}; this demo knows bilinear and "
                             f"bicubic")
        self.metadata, self.max_pixels = metadata, max_pixels
        # exports from before in_chans and bit_depth were recorded are 8-bit RGB
        self.in_chans, self.bit_depth = int(metadata.get("in_chans", 3)), int(metadata.get("bit_depth", 8))
        if self.in_chans not in (1, 3) or self.bit_depth not in (8, 16):
            raise ValueError(f"unsupported input {self.in_chans} channel(s) x {self.bit_depth} bits; this demo knows "
                             f"1 or 3 channels of 8 or 16 bits")
        std = torch.tensor(metadata["std"], dtype=torch.float32)
        # The same float32 operations as the project's BatchPreprocessor, so the inputs are bit-identical.
        self.scale = (1.0 / ((2.0 ** self.bit_depth - 1) * std)).view(1, -1, 1, 1)
        self.shift = (torch.tensor(metadata["mean"], dtype=torch.float32) / std).view(1, -1, 1, 1)

    def load(self, source: ImageSource) -> torch.Tensor:
        """One image as the network's ``C x H x W`` uint8/uint16 input (decoded, resized, padded or cropped)."""
        image = read_image(source, self.max_pixels, self.in_chans, self.bit_depth)
        return GEOMETRY[self.metadata["resize"]](image, self.metadata)

    def normalise(self, batch: torch.Tensor) -> torch.Tensor:
        """uint8/uint16 ``N x C x H x W`` -> the float batch the export expects."""
        return batch.float().mul_(self.scale).sub_(self.shift).contiguous()


class Classifier:
    """An exported classifier with the project's evaluation preprocessing.

    ``backend`` is ``auto`` (ONNX Runtime for ``.onnx``, OpenVINO for ``.xml``, else TorchScript),
    ``torchscript``, ``onnxruntime`` or ``openvino``; ``threads`` sets the intra-op thread count (default: the
    library's); images of more than ``max_pixels`` pixels are refused (0: no limit).
    """

    def __init__(self, model_path: str | os.PathLike, backend: str = "auto", threads: int | None = None,
                 max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS):
        path = Path(model_path)
        if not path.is_file():
            raise FileNotFoundError(f"model file {str(path)!r} does not exist")
        if is_training_checkpoint(path):
            raise ValueError(f"{path} is a training checkpoint (torch.save), not an exported model: export it "
                             f"with python main.py --jit --resume {path} (or --onnx) and pass the file it writes")
        if backend == "auto":
            backend = BACKEND_BY_SUFFIX.get(path.suffix.lower(), "torchscript")
        if backend not in BACKENDS:
            raise ValueError(f"unknown backend {backend!r}; choose auto, {', '.join(BACKENDS)}")
        self.backend_name = backend
        self.backend = BACKENDS[backend](path, threads)
        self.metadata: dict[str, Any] = self.backend.metadata
        missing = [k for k in REQUIRED_METADATA if k not in self.metadata]
        if missing:
            raise ValueError(f"{path} carries no {', '.join(missing)} metadata: export it with "
                             f"main.py --jit, --onnx or --openvino")
        names = self.metadata["class_names"]
        if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
            raise ValueError(f"{path}: its class_names metadata is not a list of class names (got "
                             f"{type(names).__name__} {str(names)[:60]}): export it again with main.py --jit, "
                             f"--onnx or --openvino")
        self.path, self.class_names = path, list(names)
        self.head = self.metadata.get("head", "softmax")
        if self.head not in ACTIVATIONS:
            raise ValueError(f"{path}: unsupported head {self.head!r}; this demo knows {', '.join(ACTIVATIONS)}")
        # exports from before multi-label models are single-label
        self.multi_label = self.metadata.get("multi_label", False) is True
        self.activation = ACTIVATIONS["bce"] if self.multi_label else ACTIVATIONS[self.head]
        self.thresholds = decision_thresholds(self.metadata, path) if self.multi_label else None
        self.temperature = export_temperature(self.metadata, path)
        self.preprocessor = Preprocessor(self.metadata, max_pixels)

    def load(self, source: ImageSource) -> torch.Tensor:
        """One image as the network's ``C x H x W`` integer input."""
        return self.preprocessor.load(source)

    def classify(self, batch: torch.Tensor) -> torch.Tensor:
        """``N x C`` class probabilities (softmax, or sigmoid for a bce/asl head or a multi-label export) of a
        uint8 batch from :meth:`load`;
        ValueError when the model's ``C`` outputs are not one per name of its class_names metadata."""
        logits = self.backend(self.preprocessor.normalise(batch))
        if logits.ndim != 2 or logits.shape[1] != len(self.class_names):
            raise ValueError(f"{self.path}: the model has {logits.shape[-1] if logits.ndim else 0} outputs per image "
                             f"but its class_names metadata names {len(self.class_names)} classes: export it again "
                             f"with main.py --jit, --onnx or --openvino")
        return self.activation(logits.float() / self.temperature)

    def probabilities(self, images: Sequence[ImageSource]) -> torch.Tensor:
        """``N x C`` class probabilities of ``images`` (paths, encoded bytes or Pillow images)."""
        return self.classify(torch.stack([self.load(image) for image in images]))

    def predict(self, images: Sequence[ImageSource], topk: int = 5) -> list[list[tuple[str, float]]]:
        """The top-k ``(class name, probability)`` pairs of each image, most likely first."""
        probs = self.probabilities(images)
        values, indices = probs.topk(min(topk, probs.shape[1]), dim=1)
        return [[(self.class_names[i], float(v)) for v, i in zip(vs.tolist(), ix.tolist())]
                for vs, ix in zip(values, indices)]

    def label_sets(self, probs: torch.Tensor) -> list[list[tuple[str, float]]]:
        """A multi-label export's label set of each row of ``probs`` (from :meth:`classify`): the ``(class name,
        probability)`` of the classes at or over their threshold, highest first (equal ones in class order)."""
        if self.thresholds is None:
            raise ValueError(f"{self.path} is a single-label export: it predicts one class (predict), not label sets")
        order = torch.sort(probs, dim=1, descending=True, stable=True).indices
        rows = probs.tolist()  # Python floats, compared as the project compares them (in float64)
        return [[(self.class_names[i], row[i]) for i in ranked if row[i] >= self.thresholds[i]]
                for row, ranked in zip(rows, order.tolist())]

    def predict_labels(self, images: Sequence[ImageSource]) -> list[list[tuple[str, float]]]:
        """A multi-label export's label set of each of ``images``: ``(class name, probability)``, highest first."""
        return self.label_sets(self.probabilities(images))


def decision_thresholds(metadata: dict[str, Any], path: Path) -> list[float]:
    """A multi-label export's per-class decision thresholds (one per class name): its ``thresholds`` metadata,
    0.5 for every class when it has none."""
    count = len(metadata["class_names"])
    values = metadata.get("thresholds") or [DEFAULT_THRESHOLD] * count
    if (not isinstance(values, list) or len(values) != count
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and 0.0 <= v <= 1.0 for v in values)):
        raise ValueError(f"{path}: its thresholds metadata is not one probability (0..1) per class of its "
                         f"{count} classes (got {str(values)[:60]}): export it again with main.py --jit, --onnx "
                         f"or --openvino")
    return [float(v) for v in values]


def export_temperature(metadata: dict[str, Any], path: Path) -> float:
    """The softmax temperature the logits are divided by: the metadata's ``temperature`` (``main.py
    --calibrate``), 1 when it has none."""
    value = metadata.get("temperature", 1.0)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < float("inf"):
        raise ValueError(f"{path}: its temperature metadata is not a positive number (got {str(value)[:60]}): "
                         f"export it again with main.py --jit, --onnx or --openvino")
    return float(value)


def is_training_checkpoint(path: Path) -> bool:
    """Whether ``path`` is a ``torch.save`` archive (``<name>/data.pkl``) rather than a TorchScript one,
    which also holds ``constants.pkl`` and ``code/``; TorchScript calls both "corrupted" otherwise."""
    try:
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
    except (zipfile.BadZipFile, OSError):
        return False
    return (any(n.endswith("/data.pkl") for n in names)
            and not any(n.endswith("/constants.pkl") or "/code/" in n for n in names))


# --- command line -----------------------------------------------------------------------------------

def list_images(source: str | os.PathLike) -> list[Path]:
    """``source`` itself, or every image under the folder ``source`` (recursively, sorted)."""
    path = Path(source)
    if path.is_dir():
        return sorted(p for p in path.rglob("*")
                      if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith("."))
    if path.is_file():
        return [path]
    raise FileNotFoundError(f"{str(path)!r} is neither an image nor a folder")


def batches(items: Sequence[Path], size: int) -> Iterator[Sequence[Path]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def topk_rows(clf: Classifier, probs: torch.Tensor, topk: int,
              reject_below: float | None = None) -> list[dict[str, Any]]:
    """A single-label export's result per row of ``probs``: ``{"topk": [[name, p], ...], "probabilities": [...]}``,
    most likely first; with ``reject_below`` the ``answer`` first (the top class, or ``unknown`` when its
    probability is below it). The command line's ``--json`` rows and demos/serve.py's answers."""
    values, indices = probs.topk(min(topk, probs.shape[1]), dim=1)
    rows = []
    for p, vs, ix in zip(probs.tolist(), values.tolist(), indices.tolist()):
        top = [(clf.class_names[i], v) for v, i in zip(vs, ix)]
        answer = None if reject_below is None else (top[0][0] if top[0][1] >= reject_below else UNKNOWN)
        rows.append({**({"answer": answer} if answer else {}), "topk": top, "probabilities": p})
    return rows


def label_set_rows(clf: Classifier, probs: torch.Tensor) -> list[dict[str, Any]]:
    """A multi-label export's result per row of ``probs``: ``{"labels": [{"name", "score"}], "scores": {name: p}}``
    (its label set, highest first, and every class's probability)."""
    return [{"labels": [{"name": n, "score": v} for n, v in labels], "scores": dict(zip(clf.class_names, p))}
            for labels, p in zip(clf.label_sets(probs), probs.tolist())]


def topk_lines(clf: Classifier, paths: Sequence[Path], probs: torch.Tensor, args: argparse.Namespace) -> list[str]:
    """A single-label export's output line per image: its top-k classes (text or JSON); with ``--reject_below``
    the answer first (the top class, or ``unknown`` when its probability is below the threshold)."""
    lines = []
    for path, row in zip(paths, topk_rows(clf, probs, args.topk, args.reject_below)):
        text = ", ".join(f"{name} {v:.4f}" for name, v in row["topk"])
        if args.json:
            lines.append(json.dumps({"path": str(path), **row}))
        else:
            lines.append(f"{path}: unknown ({text})" if row.get("answer") == UNKNOWN else f"{path}: {text}")
    return lines


def label_set_lines(clf: Classifier, paths: Sequence[Path], probs: torch.Tensor,
                    args: argparse.Namespace) -> list[str]:
    """A multi-label export's output line per image: its label set with scores (text or JSON, with every
    class's probability)."""
    lines = []
    for path, row in zip(paths, label_set_rows(clf, probs)):
        if args.json:
            lines.append(json.dumps({"path": str(path), **row}))
        else:
            labels = ", ".join(f"{label['name']} {label['score']:.4f}" for label in row["labels"])
            lines.append(f"{path}: " + (labels or "(no label)"))
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Classify images with a model exported by main.py "
                                                 "--jit/--onnx/--openvino.")
    parser.add_argument("model", help="model_jit.pt (TorchScript), model[.int8].onnx or model[.int8].xml (OpenVINO)")
    parser.add_argument("images", help="an image or a folder of images (searched recursively)")
    parser.add_argument("--topk", type=int, default=5,
                        help="classes printed per image (single-label; a multi-label export prints its label set)")
    parser.add_argument("--backend", choices=["auto", *BACKENDS], default="auto",
                        help="auto: ONNX Runtime for .onnx, OpenVINO for .xml, TorchScript otherwise")
    parser.add_argument("--threads", type=int, default=None, help="intra-op threads (default: the library's)")
    parser.add_argument("--batch_size", type=int, default=32, help="images per forward pass")
    parser.add_argument("--json", action="store_true",
                        help="print one JSON object per image (path, top-k, all probabilities; multi-label: path, "
                             "labels, scores) instead of text")
    parser.add_argument("--reject_below", type=float, default=None, metavar="P",
                        help="answer unknown when the top (calibrated) probability is below P (single-label)")
    parser.add_argument("--max_image_pixels", type=int, default=DEFAULT_MAX_IMAGE_PIXELS,
                        help="refuse images of more pixels, from their header (decompression bombs); 0 = no limit")
    args = parser.parse_args(argv)
    if args.topk < 1 or args.batch_size < 1:
        parser.error("--topk and --batch_size must be >= 1")
    if args.reject_below is not None and not 0 < args.reject_below <= 1:
        parser.error(f"--reject_below must be a probability in (0, 1], got {args.reject_below}")
    if args.max_image_pixels < 0:
        parser.error(f"--max_image_pixels must be >= 0 (0 = no limit), got {args.max_image_pixels}")
    try:
        paths = list_images(args.images)
        if not paths:
            raise FileNotFoundError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in the folder {args.images}")
        clf = Classifier(args.model, args.backend, args.threads, args.max_image_pixels)
        if clf.multi_label and args.reject_below is not None:
            raise ValueError(f"--reject_below is for single-label exports: {args.model} is multi-label, and answers "
                             f"an empty label set when no class reaches its threshold")
    except Exception as e:  # a missing file, or a model the backend cannot load: one line, no traceback
        print(error_line("classifier.py", e), file=sys.stderr)
        return 1
    with own_pixel_check():  # --max_image_pixels alone refuses images, from their headers
        return classify_all(clf, paths, args)


def error_line(program: str, e: Exception) -> str:
    """The one line a program of the demos prints for an error at start-up: its type and first line."""
    text = str(e).strip()
    return f"{program}: {type(e).__name__}: {text.splitlines()[0] if text else ''}"


def classify_all(clf: Classifier, paths: Sequence[Path], args: argparse.Namespace) -> int:
    """Print every image's answer, batch by batch, skipping (and counting) the unreadable ones; the exit code."""
    done, failed = 0, 0
    for chunk in batches(paths, args.batch_size):
        loaded, kept = [], []
        for path in chunk:
            try:
                loaded.append(clf.load(path))
                kept.append(path)
            except ImageTooLarge as e:
                failed += 1
                print(f"skipped {path}: {e}", file=sys.stderr)
            except Exception as e:  # Pillow raises many types for unreadable files
                failed += 1
                print(f"skipped {path}: cannot decode image ({type(e).__name__}: {e})", file=sys.stderr)
        if not loaded:
            continue
        try:
            probs = clf.classify(torch.stack(loaded))
        except ValueError as e:  # the model does not fit its own metadata: one line, no traceback
            print(f"classifier.py: {type(e).__name__}: {e}", file=sys.stderr)
            return 1
        for line in (label_set_lines if clf.multi_label else topk_lines)(clf, kept, probs, args):
            print(line)
        done += len(kept)
    print(f"{done} image(s) classified with {Path(args.model).name} ({clf.backend_name})"
          + (f", {failed} unreadable image(s) skipped" if failed else ""), file=sys.stderr)
    return 0 if done else 1


if __name__ == "__main__":
    sys.exit(main())
