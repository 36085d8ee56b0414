"""``--cache_dataset memory``: decode a small dataset once into one uint8 tensor, serve augmented batches.

For the bundled digits and CIFAR- or MNIST-sized sets, the per-image work of the standard path (read a
file, decode it, transform it in a worker, collate) costs more than the model. Here every image is
decoded once (in parallel) into one ``N x C x H x W`` uint8 tensor (uint16 with ``--bit_depth 16``), on the
GPU when training there, and
each batch is an ``index_select`` followed by batched augmentation:

* the deterministic head of the transform (a letterbox, or resize + centre crop) runs once, at caching
  time, so evaluation batches are pure indexing;
* RandomResizedCrop draws its boxes with torchvision's own algorithm, vectorised, and resamples all of
  them in one ``roi_align`` call (bilinear, averaging several samples per output pixel when shrinking;
  with ``--interpolation bicubic`` each crop is resized on its own);
* horizontal flips and random erasing are masks over the batch;
* anything else (AutoAugment, RandAugment, our custom policy) runs per image, seeded per sample as on
  the standard path. Only those policies cost per-image Python work.

The batches are uint8 like the standard loader's, so :class:`dataloader.loader.BatchPreprocessor`, the
batch hooks (mixup, multi-scale) and every loop work unchanged.
"""
from __future__ import annotations

import itertools
import logging
import math
from typing import Iterable, Iterator, Sequence

import torch
import torch.nn as nn
from torch.utils.data import DataLoader, Dataset, Sampler
from torchvision.ops import roi_align
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from .datasets import ClassificationDataset, call_seeded
from .io import PEAK_OF_DTYPE, ImageDecodeError
from .labels import target_tensor
from .transforms import Letterbox
from .workers import loader_generator

logger = logging.getLogger(__name__)

GB = 1024 ** 3
DETERMINISTIC = (Letterbox, v2.Resize, v2.CenterCrop)


class CacheTooLarge(ValueError):
    """The decoded dataset would not fit under ``--cache_max_gb``."""


# ----------------------------------------------------------------------------- batched random ops
def _draw_sides(n: int, height: int, width: int, scale: Sequence[float], ratio: Sequence[float],
                generator: torch.Generator, tries: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``n x tries`` candidate sides ``(round(sqrt(a * r)), round(sqrt(a / r)))`` with the area
    ``a ~ U(scale) * height * width`` and ``log r ~ U(log ratio)``, drawn as torchvision draws them."""
    log_ratio = torch.log(torch.tensor(ratio, dtype=torch.float64))
    area = height * width * (scale[0] + (scale[1] - scale[0]) * torch.rand(n, tries, generator=generator,
                                                                              dtype=torch.float64))
    aspect = torch.exp(log_ratio[0] + (log_ratio[1] - log_ratio[0]) * torch.rand(n, tries, generator=generator,
                                                                                     dtype=torch.float64))
    return torch.sqrt(area * aspect).round().long(), torch.sqrt(area / aspect).round().long()


def _pick_and_place(valid: torch.Tensor, h: torch.Tensor, w: torch.Tensor, height: int, width: int,
                    generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
                                                         torch.Tensor]:
    """The first valid of each sample's tries and a uniform position for it: ``(found, top, left, h, w)``."""
    found, pick = valid.any(1), valid.to(torch.uint8).argmax(1)
    rows = torch.arange(len(valid))
    h, w = h[rows, pick], w[rows, pick]
    u = torch.rand(len(valid), 2, generator=generator, dtype=torch.float64)
    top = (u[:, 0] * (height - h + 1)).floor().long()
    left = (u[:, 1] * (width - w + 1)).floor().long()
    return found, top, left, h, w


def rrc_boxes(n: int, height: int, width: int, scale: Sequence[float], ratio: Sequence[float],
              generator: torch.Generator, tries: int = 10) -> torch.Tensor:
    """``n x 4`` integer boxes ``(top, left, h, w)`` drawn as ``v2.RandomResizedCrop`` draws one.

    Up to ``tries`` candidates per sample (area fraction ~ U(scale), log aspect ~ U(log ratio)); the
    first that fits is kept, else the central crop clamped to ``ratio``, exactly torchvision's rule.
    """
    w, h = _draw_sides(n, height, width, scale, ratio, generator, tries)
    found, top, left, h, w = _pick_and_place((w > 0) & (w <= width) & (h > 0) & (h <= height), h, w, height, width,
                                             generator)
    # torchvision's fallback: the whole image, cut to the nearest allowed aspect ratio, centred
    in_ratio = width / height
    if in_ratio < min(ratio):
        fw, fh = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        fh, fw = height, int(round(height * max(ratio)))
    else:
        fw, fh = width, height
    fallback = torch.tensor([(height - fh) // 2, (width - fw) // 2, fh, fw])
    boxes = torch.stack([top, left, h, w], 1)
    return torch.where(found[:, None], boxes, fallback)


def resized_crops(images: torch.Tensor, boxes: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Crop ``(top, left, h, w)`` boxes out of a float batch and resize each to ``size`` (bilinear).

    One ``roi_align`` call; with ``aligned=True`` its sample points are those of a bilinear resize
    (half-pixel centres), and when a box is larger than ``size`` it averages ``ceil(box/size)`` samples
    per output pixel along each axis, an area filter like the antialiased resize.
    """
    b = boxes.to(images.device, torch.float32)
    rois = torch.stack([torch.arange(len(b), device=images.device, dtype=torch.float32),
                        b[:, 1], b[:, 0], b[:, 1] + b[:, 3], b[:, 0] + b[:, 2]], 1)
    return roi_align(images, rois, output_size=(int(size[0]), int(size[1])), spatial_scale=1.0,
                     sampling_ratio=-1, aligned=True)


def erasing_masks(n: int, height: int, width: int, p: float, scale: Sequence[float], ratio: Sequence[float],
                  generator: torch.Generator, tries: int = 10) -> torch.Tensor:
    """``n x H x W`` bool masks of the rectangles ``v2.RandomErasing`` would erase (none with prob ``1 - p``)."""
    apply = torch.rand(n, generator=generator, dtype=torch.float64) < p
    h, w = _draw_sides(n, height, width, scale, ratio, generator, tries)
    found, top, left, h, w = _pick_and_place((h < height) & (w < width), h, w, height, width, generator)
    on = apply & found
    ys, xs = torch.arange(height), torch.arange(width)
    in_rows = (ys[None] >= top[:, None]) & (ys[None] < (top + h)[:, None])
    in_cols = (xs[None] >= left[:, None]) & (xs[None] < (left + w)[:, None])
    return in_rows[:, :, None] & in_cols[:, None, :] & on[:, None, None]


class BatchAugment:
    """The random part of a training transform, run on a whole uint8 batch at once.

    Built by :func:`split_transform` from the ops that follow the cached deterministic head, in their
    order: RandomResizedCrop, horizontal flip and random erasing are batched (one draw per sample from
    a generator seeded by the batch's sample seeds); any other op runs per image under that sample's
    own seed, as :class:`dataloader.datasets.ClassificationDataset` runs it.
    """

    def __init__(self, ops: Sequence[nn.Module]):
        self.ops = list(ops)

    def __repr__(self) -> str:
        return f"BatchAugment({', '.join(type(op).__name__ for op in self.ops)})"

    def __call__(self, images: torch.Tensor, seeds: Sequence[int]) -> torch.Tensor:
        g = torch.Generator().manual_seed(int(seeds[0]) ^ len(seeds))
        n = images.shape[0]
        for op in self.ops:
            h, w = images.shape[-2:]
            if isinstance(op, v2.RandomResizedCrop):
                boxes = rrc_boxes(n, h, w, op.scale, op.ratio, g)
                if op.interpolation == v2.InterpolationMode.BILINEAR:
                    crops = resized_crops(images.float(), boxes, op.size)
                    images = crops.round_().clamp_(0, PEAK_OF_DTYPE[images.dtype]).to(images.dtype)
                else:  # roi_align samples bilinearly: bicubic crops are resampled one by one, as torchvision does
                    images = torch.stack([F.resized_crop(image, *map(int, box), op.size, interpolation=op.interpolation,
                                                         antialias=True) for image, box in zip(images, boxes)])
            elif isinstance(op, v2.RandomHorizontalFlip):
                flip = (torch.rand(n, generator=g) < op.p).to(images.device)
                images = torch.where(flip[:, None, None, None], images.flip(-1), images)
            elif isinstance(op, v2.RandomErasing) and op.value in (None, 0, [0], (0,)):
                mask = erasing_masks(n, h, w, op.p, op.scale, op.ratio, g).to(images.device)
                images = torch.where(mask[:, None], images.new_zeros(()), images)  # masked_fill lacks uint16
            else:
                images = torch.stack([call_seeded(op, image, int(seed)) for image, seed in zip(images, seeds)])
        return images


def split_transform(transform: nn.Module | None) -> tuple[nn.Module | None, BatchAugment | None]:
    """``(head, augment)``: the leading deterministic ops (run once when caching) and the rest, batched."""
    ops = list(transform.transforms) if isinstance(transform, v2.Compose) else [transform] if transform else []
    cut = 0
    while cut < len(ops) and isinstance(ops[cut], DETERMINISTIC):
        cut += 1
    head = v2.Compose(ops[:cut]) if cut else None
    return head, BatchAugment(ops[cut:]) if cut < len(ops) else None


# ----------------------------------------------------------------------------- decoding once
class _DecodeEach(Dataset):
    """``(index, image after the head, or the decode error)`` for each sample; runs in loader workers."""

    def __init__(self, dataset: ClassificationDataset, head: nn.Module | None):
        self.dataset, self.head = dataset, head

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        try:
            image = self.dataset.load(index)
        except ImageDecodeError as e:
            return index, None, str(e)
        return index, self.head(image) if self.head is not None else image, None


class DecodedCache:
    """Every image of ``dataset`` decoded (and passed through ``head``) once into one uint8 tensor.

    ``images`` is ``N x 3 x H x W`` on ``device``, ``H x W`` the size of the first image after ``head``;
    an image of another size is letterboxed to it (logged: the cache is meant for same-size sets).
    ``valid`` marks the rows that decoded (all of them unless ``dataset.skip_bad``). Refuses, before allocating,
    when the tensor would exceed ``max_gb``.
    """

    def __init__(self, dataset: ClassificationDataset, head: nn.Module | None = None, *, max_gb: float = 4.0,
                 device: torch.device | str = "cpu", workers: int = 0):
        self.dataset = dataset
        first = _first_image(dataset, head)
        self.size = tuple(first.shape[-2:])
        need = len(dataset) * first.numel() * first.element_size()
        if need > max_gb * GB:
            raise CacheTooLarge(
                f"--cache_dataset memory would hold the {len(dataset)} {dataset.split} images of {dataset.root} "
                f"decoded to {first.shape[0]}x{self.size[0]}x{self.size[1]}: {need / GB:.2f} GB, over "
                f"--cache_max_gb {max_gb:g}; "
                f"raise --cache_max_gb, lower --image_size, or use --cache_dataset none (decode per batch)")
        images = torch.empty((len(dataset), *first.shape), dtype=first.dtype)
        valid = torch.ones(len(dataset), dtype=torch.bool)
        fit, resized = Letterbox(self.size), 0
        for batch in decoded_batches(dataset, head, workers):
            for index, image, error in batch:
                if image is None:
                    dataset.skip_or_raise(error)
                    valid[index] = False
                    images[index] = 0
                    continue
                if tuple(image.shape[-2:]) != self.size:
                    image, resized = fit(image), resized + 1
                images[index] = image
        if resized:
            logger.warning("%d of %d %s images differ in size from the first (%dx%d) and are cached letterboxed to "
                           "it; for varied sizes --cache_dataset none follows the transform exactly",
                           resized, len(dataset), dataset.split, *self.size)
        self.images = images.to(device)
        self.valid = valid
        self.targets = target_tensor(dataset.targets, len(dataset.class_names))  # N, or N x K multi-hot
        logger.info("cached %d %s images as %s %s on %s (%.1f MB)", int(valid.sum()), dataset.split,
                    "x".join(map(str, self.images.shape[1:])), str(first.dtype).removeprefix("torch."),
                    self.images.device, need / 2**20)


def decoded_batches(dataset: ClassificationDataset, head: nn.Module | None,
                    workers: int) -> Iterable[list[tuple[int, torch.Tensor | None, str | None]]]:
    """Lists of ``(index, image after head or None, decode error or None)`` covering every sample once: the
    dataset's own pass when it has one (streamed shards read each shard once, see
    :meth:`dataloader.shards.ShardDataset.decoded_batches`), else reads by index in ``workers`` processes."""
    own = getattr(dataset, "decoded_batches", None)
    if own is not None:
        return own(head, workers)
    return DataLoader(_DecodeEach(dataset, head), batch_size=64, num_workers=workers, collate_fn=list,
                      generator=loader_generator())  # never a draw from torch's global generator


def _first_image(dataset: ClassificationDataset, head: nn.Module | None) -> torch.Tensor:
    for index in range(len(dataset)):
        try:
            image = dataset.load(index)
        except ImageDecodeError:
            continue
        return head(image) if head is not None else image
    raise ImageDecodeError(f"no image of the {dataset.split} split of {dataset.root} decodes")


class CachedLoader:
    """A DataLoader look-alike over a :class:`DecodedCache`: ``(uint8 images, targets, indices)`` batches.

    It has what the loops use of a DataLoader (``sampler`` with ``set_epoch``, ``batch_size``,
    ``drop_last``, ``dataset``, ``len``). Rows that failed to decode are dropped from their batch,
    which the loops count as skipped, as on the standard path.
    """

    def __init__(self, cache: DecodedCache, sampler: Sampler, batch_size: int, drop_last: bool,
                 augment: BatchAugment | None = None):
        self.cache, self.sampler, self.batch_size, self.drop_last = cache, sampler, batch_size, drop_last
        self.augment, self.dataset = augment, cache.dataset

    def __len__(self) -> int:
        n = len(self.sampler)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        keys = iter(self.sampler)
        for _ in range(len(self)):
            batch = [(k, 0) if isinstance(k, int) else k for k in itertools.islice(keys, self.batch_size)]
            index = torch.tensor([k[0] for k in batch], dtype=torch.long)
            keep = self.cache.valid[index]
            if not bool(keep.all()):
                batch = [k for k, ok in zip(batch, keep.tolist()) if ok]
                index = index[keep]
            if not len(index):
                yield torch.empty(0, dtype=torch.uint8), torch.empty(0, dtype=torch.long), index
                continue
            images = self.cache.images.index_select(0, index.to(self.cache.images.device))
            if self.augment is not None:
                images = self.augment(images, [seed for _, seed in batch])
            yield images, self.cache.targets[index], index


def build_cache(dataset: ClassificationDataset, *, max_gb: float, device: torch.device | str,
                workers: int) -> tuple[DecodedCache, BatchAugment | None]:
    """``dataset`` decoded once (its transform's deterministic head applied), and the batched rest of it."""
    head, augment = split_transform(dataset.transform)
    return DecodedCache(dataset, head, max_gb=max_gb, device=device, workers=workers), augment

