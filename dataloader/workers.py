"""The DataLoader settings shared by every per-batch loader (the plain one and the ``--gpu_decode`` one)."""
from __future__ import annotations

from typing import Callable

import torch
from torch.utils.data import DataLoader, Dataset, Sampler


def loader_generator() -> torch.Generator:
    """A generator of the loader's own for its workers' base seed (see :func:`worker_loader`)."""
    return torch.Generator().manual_seed(0)


def worker_loader(dataset: Dataset, sampler: Sampler, *, batch_size: int, workers: int, drop_last: bool,
                  collate_fn: Callable, pin_memory: bool = False) -> DataLoader:
    """The DataLoader settings every per-batch loader shares: workers kept alive between epochs and
    about 8 batches in flight in all.

    The loader draws its workers' base seed from a generator of its own, never from torch's global one:
    without it every epoch's iterator took a number from the global generator, so a run resumed in the
    middle of an epoch (its global RNG state restored from the checkpoint) took one number more than a run
    never stopped, and every dropout or stochastic-depth draw after it differed. Nothing a sample looks like
    depends on that seed: the sampler and each sample's transform are seeded from (run seed, epoch, index)."""
    return DataLoader(
        dataset, batch_size=batch_size, sampler=sampler, num_workers=workers, pin_memory=pin_memory,
        drop_last=drop_last, collate_fn=collate_fn, persistent_workers=workers > 0,
        prefetch_factor=max(2, 8 // workers) if workers > 0 else None, generator=loader_generator(),
    )
