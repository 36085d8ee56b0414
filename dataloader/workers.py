"""The DataLoader settings shared by every per-batch loader (the plain one and the ``--gpu_decode`` one)."""
from __future__ import annotations

from typing import Callable

from torch.utils.data import DataLoader, Dataset, Sampler


def worker_loader(dataset: Dataset, sampler: Sampler, *, batch_size: int, workers: int, drop_last: bool,
                  collate_fn: Callable, pin_memory: bool = False) -> DataLoader:
    """The DataLoader settings every per-batch loader shares: workers kept alive between epochs and
    about 8 batches in flight in all."""
    return DataLoader(
        dataset, batch_size=batch_size, sampler=sampler, num_workers=workers, pin_memory=pin_memory,
        drop_last=drop_last, collate_fn=collate_fn, persistent_workers=workers > 0,
        prefetch_factor=max(2, 8 // workers) if workers > 0 else None,
    )
