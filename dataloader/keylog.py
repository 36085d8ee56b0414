"""Tests only: which process read which sample. With ``PLAYGROUND_SAMPLE_KEYS=PREFIX`` set, each rank's
DataLoader workers append a line per sample they hand over to ``PREFIX.r<rank>w<worker>`` (reads in the rank's
own process, e.g. the first batch drawn for ``augmented_samples.png``, to ``PREFIX.r<rank>main``): ``<epoch> <key>``
for streamed shards (``dataloader/shards.py``), ``<split> <key>`` for the map-style layouts (their datasets
do not know the epoch: count one epoch). The DDP tests count these lines to check that every sample is read
once per epoch across ranks and workers. Unset (always, outside tests), nothing is opened or written.
"""
from __future__ import annotations

import os
from typing import IO

from torch.utils.data import get_worker_info

KEYS_ENV = "PLAYGROUND_SAMPLE_KEYS"


def keys_file(rank: int | None = None) -> IO[str] | None:
    """This worker's key file, opened to append line by line (None when :data:`KEYS_ENV` is unset); ``rank``:
    the process's rank (default: ``$RANK``, which torchrun sets)."""
    prefix = os.environ.get(KEYS_ENV)
    if not prefix:
        return None
    info = get_worker_info()
    rank = int(os.environ.get("RANK", "0")) if rank is None else rank
    return open(f"{prefix}.r{rank}{f'w{info.id}' if info is not None else 'main'}", "a", buffering=1)
