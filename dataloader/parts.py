"""Writing a split as numbered part files (WebDataset shards, parquet files), several at a time: the cutting of
the records into parts and the bounded pool that writes them, shared by every writer of
:data:`dataloader.convert.WRITERS`.

The cut depends on the records only (their order, count and sizes), never on the number of jobs, so the same
input gives the same files, byte for byte, whatever ``jobs`` is. The parts are written in threads (the work is
file I/O and compression in C, which release the GIL); at most ``jobs + 1`` parts are held in memory.
"""
from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable, Iterable, Iterator, Sequence, TypeVar

Record = tuple[str, bytes, int]
T = TypeVar("T")


def cut_parts(records: Iterable[Record], max_bytes: int, max_samples: int | None = None,
              overhead: int = 0) -> Iterator[list[Record]]:
    """``records`` cut into consecutive parts of at most ``max_bytes`` bytes and ``max_samples`` records (each
    record counts its image bytes plus ``overhead``); a part closes before it would pass either limit (a
    single record over ``max_bytes`` is a part of its own)."""
    part: list[Record] = []
    size = 0
    for record in records:
        if part and (len(part) == max_samples or size + len(record[1]) > max_bytes):
            yield part
            part, size = [], 0
        part.append(record)
        size += len(record[1]) + overhead
    if part:
        yield part


def write_parts(parts: Iterable[Sequence[Record]], write: Callable[[int, Sequence[Record]], T], jobs: int) -> list[T]:
    """``write(i, part)`` for the ``i``-th of ``parts``, ``jobs`` at a time in threads; their results in order.
    The next part is only cut (``parts`` drawn on) while fewer than ``jobs + 1`` are waiting or being written."""
    jobs = max(1, jobs)
    futures: list[Future] = []
    with ThreadPoolExecutor(jobs) as pool:
        for i, part in enumerate(parts):
            futures.append(pool.submit(write, i, part))
            if len(futures) > jobs:
                futures[-jobs - 1].result()  # raises a writer's error here, early
        return [f.result() for f in futures]
