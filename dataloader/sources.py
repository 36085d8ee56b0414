"""Images without labels, to classify or explain: ``--predict SOURCE`` and ``--visual_source SOURCE``.

A source is one image, a folder (recursive, listed by the one walker: ``dataloader.io.list_images``),
a ``.txt`` list of image paths, or (:func:`source_images`) a Hugging Face dataset: every row of its splits,
named by its key ``<split>/<row>``. :class:`SourceImages` serves them like a dataset, so the one evaluation
loop and the CAM loop run on them unchanged; the label of every image is :data:`UNKNOWN_LABEL`.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch.utils.data import Dataset

from .hf import is_hf_folder, unlabelled_rows
from .io import (
    DEFAULT_MAX_IMAGE_PIXELS,
    IMG_EXTENSIONS,
    RGB8,
    ImageDecodeError,
    PixelFormat,
    decode_pixels,
    list_images,
)

logger = logging.getLogger(__name__)

UNKNOWN_LABEL = -1  # never a class index: top-1 counts no hit, CAM titles say "unknown"


def read_list(file: Path) -> list[Path]:
    """Paths from a txt list: one per line, optionally followed by an integer label (ignored);
    relative paths resolve against the list's folder, blank lines and ``#`` comments are skipped."""
    paths = []
    for line in file.read_text().splitlines():
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        parts = text.rsplit(None, 1)
        if len(parts) == 2 and parts[1].lstrip("-").isdigit() and not _resolve(file, text).is_file():
            text = parts[0]
        paths.append(_resolve(file, text))
    return paths


def _resolve(file: Path, name: str) -> Path:
    return Path(name) if os.path.isabs(name) else file.parent / name


def collect_sources(source: str | Path, flag: str = "--predict") -> list[Path]:
    """The images of a source given with ``flag``: a folder (recursive), a ``.txt`` list, or one image.
    A missing source or one without images is an error naming ``flag``."""
    source = Path(source)
    if source.is_dir():
        paths = list_images(source)
    elif source.suffix.lower() == ".txt":
        paths = read_list(source)
    elif source.is_file():
        paths = [source]
    else:
        raise FileNotFoundError(f"{flag}: {str(source)!r} does not exist")
    if not paths:
        raise ValueError(f"{flag}: no images in {source} ({', '.join(IMG_EXTENSIONS)})")
    return paths


def source_images(source: str | Path, flag: str = "--predict", hub_name: bool = False, columns: Any = None
                  ) -> tuple[list[Path], Callable[[str], bytes] | None]:
    """The images of ``source`` and how to read them (None: from disk). A folder holding a Hugging Face dataset
    (``save_to_disk`` or Hub-layout parquet; with ``hub_name``, also a Hub name in the datasets cache) is every
    row of its train, val and test splits, named ``<split>/<row>`` and read from its arrow files (``columns``:
    ``--image_col``, else found); anything else is :func:`collect_sources`' files."""
    path = Path(source)
    if (path.is_dir() and is_hf_folder(path)) or (hub_name and not path.exists()):
        keys, reader = unlabelled_rows(source, columns)
        if not keys:
            raise ValueError(f"{flag}: the Hugging Face dataset {source} has no rows")
        return [Path(key) for key in keys], reader
    return collect_sources(source, flag), None


class SourceImages(Dataset):
    """Unlabelled images as a dataset of ``(uint8 image after transform, UNKNOWN_LABEL, index)``.

    An image over ``max_pixels`` is refused from its header. An image that cannot be read or decoded
    raises ImageDecodeError saying how to skip it, or with ``skip_bad`` is logged and comes out as None,
    which the loader's collate drops as it drops ``--skip_bad_images`` samples (the indices missing from
    a loop's output are the unreadable images; :meth:`failure` says why for each). ``reader`` reads an
    image's bytes by its name (a Hugging Face row's key), None: the file at the path.
    """

    split = "source"

    def __init__(self, paths: Sequence[str | Path], transform: Callable[[torch.Tensor], torch.Tensor],
                 max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS, skip_bad: bool = False, pixels: PixelFormat = RGB8,
                 reader: Callable[[str], bytes] | None = None):
        self.paths, self.pixels, self.reader = [Path(p) for p in paths], pixels, reader  # reader None: files
        self.transform, self.max_pixels, self.skip_bad = transform, max_pixels, skip_bad
        self.samples = [(str(p), UNKNOWN_LABEL) for p in self.paths]
        self.targets = [UNKNOWN_LABEL] * len(self.paths)

    def __len__(self) -> int:
        return len(self.paths)

    def load(self, index: int) -> torch.Tensor:
        """The decoded image ``index``; raises ImageDecodeError when it cannot be read or decoded (also
        when over ``max_pixels``, from the header)."""
        path = self.paths[index]
        try:
            data = self.reader(str(path)) if self.reader is not None else path.read_bytes()
        except OSError as e:
            raise ImageDecodeError(f"{path}: cannot read ({e.strerror or e})") from None
        return decode_pixels(data, name=str(path), max_pixels=self.max_pixels, fmt=self.pixels)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, int, int] | None:
        index = key[0] if isinstance(key, tuple) else key
        try:
            image = self.load(index)
        except ImageDecodeError as e:
            if not self.skip_bad:
                raise ImageDecodeError(f"{e}; fix or remove it, or pass --skip_bad_images") from None
            logger.warning("skipped unreadable image %s", e)
            return None
        return self.transform(image), UNKNOWN_LABEL, index

    def failure(self, index: int) -> str:
        """Why image ``index`` could not be read (without its path)."""
        try:
            self.load(index)
        except ImageDecodeError as e:
            return str(e).removeprefix(f"{self.paths[index]}: ")
        return "could not be read"
