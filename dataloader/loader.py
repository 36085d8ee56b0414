"""Samplers, the DataLoader factory and the on-device batch preprocessing."""
from __future__ import annotations

import itertools
import math
from typing import Iterator, Sequence

import torch
from torch.utils.data import DataLoader, Dataset, Sampler, default_collate

from .io import PEAK_OF_DTYPE
from .workers import worker_loader


class EpochSampler(Sampler):
    """Base of the training/evaluation samplers: keys are a pure function of (seed, epoch).

    ``set_epoch(epoch, start)`` selects the epoch and skips its first ``start`` keys, which is how a
    run interrupted mid-epoch resumes exactly where it stopped. Subclasses yield every key of the
    epoch for this rank from ``_keys`` and give their count in ``full_length``.
    """

    epoch: int = 0
    start: int = 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = epoch, start

    def full_length(self) -> int:
        raise NotImplementedError

    def _keys(self) -> Iterator[tuple[int, int]]:
        raise NotImplementedError

    def _generator(self) -> torch.Generator:
        return torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)

    def __len__(self) -> int:
        return max(0, self.full_length() - self.start)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return itertools.islice(self._keys(), self.start, None)


class SeededSampler(EpochSampler):
    """Yields ``(index, sample_seed)`` keys; the order and seeds are a pure function of (seed, epoch).

    Like ``DistributedSampler`` it shards the (padded) order across ``world_size`` ranks, so it serves
    single-process and DDP training alike; ``drop_rest`` leaves out the last ``size % world_size`` keys of the
    order instead of padding it (no index twice in an epoch). Call :meth:`set_epoch` before each epoch.
    """

    def __init__(self, size: int, *, shuffle: bool, seed: int, rank: int = 0, world_size: int = 1,
                 pad: bool = True, drop_rest: bool = False):
        self.size, self.shuffle, self.seed = size, shuffle, seed
        self.rank, self.world_size, self.pad, self.drop_rest = rank, world_size, pad, drop_rest

    def full_length(self) -> int:
        if self.drop_rest:
            return self.size // self.world_size
        if self.pad:
            return math.ceil(self.size / self.world_size)
        return len(range(self.rank, self.size, self.world_size))

    def _keys(self) -> Iterator[tuple[int, int]]:
        g = self._generator()
        order = torch.randperm(self.size, generator=g).tolist() if self.shuffle else list(range(self.size))
        if self.drop_rest:  # every rank the same count, no index twice: the last size % world_size left out
            order = order[: self.full_length() * self.world_size]
        elif self.pad and self.world_size > 1:
            total = self.full_length() * self.world_size
            order += order[: total - len(order)]
        seeds = torch.randint(0, 2**62, (self.size,), generator=g).tolist()
        for index in order[self.rank::self.world_size]:
            yield index, seeds[index]


class ClassBalancedSampler(EpochSampler):
    """Draws ``len(targets)`` keys per epoch with replacement, each class equally likely.

    A sample is drawn with probability proportional to ``1 / count(its class)`` (``torch.multinomial``
    with a generator seeded from (seed, epoch)), so rare classes are seen as often as common ones.
    Yields ``(index, sample_seed)`` keys like :class:`SeededSampler` (one seed per draw, so an image drawn
    twice is augmented twice differently) and shards like it: every rank draws the same padded sequence
    and takes every ``world_size``-th key from ``rank``. Call :meth:`set_epoch` before each epoch.
    """

    def __init__(self, targets: Sequence[int], *, seed: int, rank: int = 0, world_size: int = 1):
        if len(targets) == 0:
            raise ValueError("ClassBalancedSampler needs at least one target")
        labels = torch.as_tensor(list(targets), dtype=torch.long)
        counts = torch.bincount(labels)
        self.weights = 1.0 / counts[labels].double()
        self.size, self.seed, self.rank, self.world_size = len(labels), seed, rank, world_size

    def full_length(self) -> int:
        return math.ceil(self.size / self.world_size)

    def _keys(self) -> Iterator[tuple[int, int]]:
        g = self._generator()
        total = self.full_length() * self.world_size
        order = torch.multinomial(self.weights, total, replacement=True, generator=g).tolist()
        seeds = torch.randint(0, 2**62, (total,), generator=g).tolist()
        for position in range(self.rank, total, self.world_size):
            yield order[position], seeds[position]


class RepeatedAugSampler(EpochSampler):
    """Repeated augmentation (Hoffer et al. 2020; DeiT's ``RASampler``): each image drawn ``repeats`` times in a
    row, every copy with its own sample seed (augmented differently), the copies dealt to consecutive ranks.

    The stream is a permutation of the dataset with each index repeated ``repeats`` times (``[a, a, a, b, b,
    b, ...]``), wrapped around to a multiple of ``world_size``; rank ``r`` takes positions ``r, r + world_size,
    ...``, so with ``world_size >= repeats`` an image's copies land on ``repeats`` different ranks. An epoch is
    cut to ``ceil(size / world_size)`` keys per rank, the length of :class:`SeededSampler`'s padded epoch, so
    ``--epochs``, the schedule and the checkpoints count the same steps as without it; such an epoch therefore
    covers about ``size / repeats`` distinct images (the next epoch draws another permutation). DeiT and timm
    cut to ``floor(size // 256 * 256 / world_size)`` instead; with ``selected_round=0`` timm's
    ``RepeatAugSampler`` gives this index order exactly (for ``seed=0``: the same generator seed, the epoch).
    Yields ``(index, sample_seed)`` keys; call :meth:`set_epoch` before each epoch.
    """

    def __init__(self, size: int, *, repeats: int, seed: int, rank: int = 0, world_size: int = 1):
        if size < 1 or repeats < 1:
            raise ValueError(f"RepeatedAugSampler needs a non-empty dataset and repeats >= 1, got size {size}, "
                             f"repeats {repeats}")
        self.size, self.repeats, self.seed, self.rank, self.world_size = size, repeats, seed, rank, world_size

    def full_length(self) -> int:
        return math.ceil(self.size / self.world_size)

    def _keys(self) -> Iterator[tuple[int, int]]:
        g = self._generator()
        stream = torch.randperm(self.size, generator=g).repeat_interleave(self.repeats).tolist()
        used = self.full_length() * self.world_size  # past the stream's end (repeats 1, tiny sets): wrapped, as timm
        seeds = torch.randint(0, 2**62, (used,), generator=g).tolist()  # one per draw: each copy its own
        for position in range(self.rank, used, self.world_size):
            yield stream[position % len(stream)], seeds[position]


def collate_skipping_bad(batch: list) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``default_collate`` minus the samples a dataset skipped (returned as None with
    ``--skip_bad_images``); an all-bad batch becomes empty tensors, which the loops pass over."""
    batch = [item for item in batch if item is not None]
    if not batch:
        return torch.empty(0, dtype=torch.uint8), torch.empty(0, dtype=torch.long), torch.empty(0, dtype=torch.long)
    return default_collate(batch)


def create_loader(dataset: Dataset, *, batch_size: int, workers: int, train: bool, seed: int = 0,
                  pin_memory: bool = False, rank: int = 0, world_size: int = 1,
                  class_balanced: bool = False, repeated_aug: int = 0, cache: str = "none",
                  cache_max_gb: float = 4.0, device: torch.device | str = "cpu", decode_on_device: bool = False):
    """A DataLoader over ``dataset`` that collates uint8 batches.

    Training loaders shuffle with a :class:`SeededSampler` (call ``loader.sampler.set_epoch``), or with
    ``class_balanced`` draw classes equally often with a :class:`ClassBalancedSampler` over
    ``dataset.targets``, or with ``repeated_aug`` N >= 1 draw each image N times in a row with a
    :class:`RepeatedAugSampler`; evaluation loaders ignore both, keep the dataset order and, under
    DDP, shard it without padding so that every sample is counted exactly once.

    ``cache="memory"`` decodes the dataset once onto ``device`` and returns a
    :class:`dataloader.cache.CachedLoader` with the same sampler and batches (augmented batch-wise);
    it refuses datasets that would exceed ``cache_max_gb`` decoded. Streamed shards (``dataset.kind == "wds"``)
    get :func:`dataloader.shards.shard_loader`, or with the cache are read whole once and then served like the
    other layouts (the training remainder ``len % world_size`` left out rather than padded: never a sample twice
    in an epoch, as when streamed). ``decode_on_device`` returns a
    :class:`dataloader.device_decode.DeviceDecodeLoader`: workers read bytes, ``device`` decodes
    (nvjpeg on CUDA) and transforms.
    """
    if getattr(dataset, "kind", None) == "wds" and cache != "memory":  # streamed shards (dataloader/shards.py)
        from .shards import shard_loader
        return shard_loader(dataset, batch_size=batch_size, workers=workers, train=train, rank=rank,
                            world_size=world_size, pin_memory=pin_memory, class_balanced=class_balanced,
                            repeated_aug=repeated_aug, decode_on_device=decode_on_device)
    if cache not in ("none", "memory"):
        raise ValueError(f"unknown cache {cache!r}; choose none or memory")
    cached = None
    if cache == "memory":  # decoded before the sampler is drawn: shards learn their labels in this pass
        from .cache import build_cache
        cached = build_cache(dataset, max_gb=cache_max_gb, device=device, workers=workers)
    sampler: Sampler
    if train and class_balanced and repeated_aug:
        raise ValueError("class-balanced sampling and repeated augmentation both choose the training order; pick one")
    if train and class_balanced:
        sampler = ClassBalancedSampler(dataset.targets, seed=seed, rank=rank, world_size=world_size)
    elif train and repeated_aug:
        sampler = RepeatedAugSampler(len(dataset), repeats=repeated_aug, seed=seed, rank=rank, world_size=world_size)
    else:  # shards keep their guarantee under DDP: no sample twice in an epoch (the remainder left out)
        wds = getattr(dataset, "kind", None) == "wds"
        sampler = SeededSampler(len(dataset), shuffle=train, seed=seed, rank=rank, world_size=world_size,
                                pad=train and not wds, drop_rest=train and wds)
    drop_last = train and len(sampler) % batch_size == 1  # a batch of one breaks batch norm
    if cached is not None:
        from .cache import CachedLoader
        return CachedLoader(cached[0], sampler, batch_size, drop_last, cached[1])
    if decode_on_device:
        from .device_decode import DeviceDecodeLoader
        return DeviceDecodeLoader(dataset, sampler, batch_size=batch_size, drop_last=drop_last, workers=workers,
                                  device=device)
    return worker_loader(dataset, sampler, batch_size=batch_size, workers=workers, drop_last=drop_last,
                         collate_fn=collate_skipping_bad, pin_memory=pin_memory)


def start_workers(loader: object) -> None:
    """Start the worker processes of a loader with persistent workers now rather than at its first use.

    Workers are forked from the training process. Forked late (the validation loader's at the end of
    the first epoch, when the trainer's heap holds gigabytes of freed activations), every page the
    trainer writes afterwards is copied once (copy-on-write): the second epoch trained ~30% slower at
    224x224. Forked while the process is small, they cost nothing. The batches the workers prefetch
    meanwhile are dropped when the loader is first iterated (at most ~8 batches of decoding).
    """
    inner = getattr(loader, "loader", loader)  # the --gpu_decode loader wraps a DataLoader
    if isinstance(inner, DataLoader) and inner.persistent_workers and inner.num_workers > 0:
        iter(inner)


class BatchPreprocessor:
    """uint8 or uint16 ``N x C x H x W`` batch -> normalised float batch on ``device`` in one batched step:
    ``(x / peak - mean) / std`` per channel, ``peak`` 255 for uint8 and 65535 for uint16 (``--bit_depth 16``);
    ``C`` is the length of ``mean`` (1 for ``--in_chans 1``). Float batches pass through unchanged."""

    def __init__(self, mean: Sequence[float], std: Sequence[float], device: torch.device,
                 channels_last: bool = False):
        self.device = device
        std_t, mean_t = torch.tensor(std, dtype=torch.float32), torch.tensor(mean, dtype=torch.float32)
        if std_t.shape != mean_t.shape:
            raise ValueError(f"mean {list(mean)} and std {list(std)} must have one value per channel each")
        view = (1, len(mean_t), 1, 1)
        self.scales = {dtype: (1.0 / (peak * std_t)).view(view).to(device) for dtype, peak in PEAK_OF_DTYPE.items()}
        self.shift = (mean_t / std_t).view(view).to(device)
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format

    @property
    def scale(self) -> torch.Tensor:
        """The uint8 scale ``1 / (255 std)``."""
        return self.scales[torch.uint8]

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        images = images.to(self.device, non_blocking=True)
        scale = self.scales.get(images.dtype)
        if scale is not None:
            if images.shape[1] != scale.shape[1]:
                raise ValueError(f"a batch of {images.shape[1]}-channel images for a model that takes "
                                 f"{scale.shape[1]} channel(s) (--in_chans)")
            images = images.float().mul_(scale).sub_(self.shift)
        return images.contiguous(memory_format=self.memory_format)
