"""Reading throughput: the photo set as WebDataset tar shards vs class folders, side by side.

The same JPEGs (``benchmarks/make_photo_set.py``, made larger) are read as class folders (one file per image)
and as shards written by ``dataloader.shards.write_wds_split`` (``--shard_samples`` per tar), with 1 and 2
worker processes:

  bytes          the encoded bytes only (no decoding): what the storage and the file system cost
  pipeline       the training loader (create_loader): read, decode, RandomResizedCrop + flip at
                 ``--image_size``, uint8 batches; what training gets

Throughput is counted from the second batch on (the worker start-up is left out); the CPU time per image
(every process's, over the whole epoch) is the per-core cost, steady on a busy machine, and ``per core`` is
folders' CPU time over shards' (above 1: shards cost less a core). ``--many_files N`` also
times listing and reading N small files in class folders against the same N samples in shards (what a file
system does with 100k+ files).

    python benchmarks/shards_vs_folders.py                  # 250 images per class (3000), ~2 minutes
    python benchmarks/shards_vs_folders.py --many_files 100000
    python benchmarks/shards_vs_folders.py --quick          # a smoke run
"""
from __future__ import annotations

import argparse
import gc
import logging
import resource
import shutil
import sys
import time
from pathlib import Path
from typing import Callable, Iterable

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.make_photo_set import make_photo_set  # noqa: E402
from dataloader import ClassificationDataset, create_loader, create_transform, shards  # noqa: E402
from dataloader.layout_writers import write_wds_shards  # noqa: E402
from dataloader.shards import ShardDataset  # noqa: E402


class FolderBytes(ClassificationDataset):
    """Class folders read to bytes only: each sample is its byte count."""

    def __getitem__(self, key):
        index = key[0] if isinstance(key, tuple) else key
        return torch.tensor(len(self.read(index))), self.samples[index][1], index


class ShardBytes(ShardDataset):
    """Shards read to bytes only: each sample is its byte count."""

    def decode(self, key, data, label, index):
        return torch.tensor(len(data)), label, index


def loader(data: Path, kind: str, size: int, batch_size: int, workers: int, decode: bool) -> Iterable:
    """The training loader over ``data`` as ``kind`` (folder or wds); without ``decode``, bytes only."""
    transform = create_transform(True, (size, size), train_resize="rrc", hflip=0.5)
    if kind == "wds":
        dataset = (ShardDataset if decode else ShardBytes)(data, "train", transform=transform, train=True)
    else:
        dataset = (ClassificationDataset if decode else FolderBytes)(data, "folder", "train", transform=transform)
    return create_loader(dataset, batch_size=batch_size, workers=workers, train=True, seed=0)


def cpu_seconds() -> float:
    """CPU time of this process and of its finished (joined) children, the DataLoader workers."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def measure(make: Callable[[], Iterable]) -> tuple[float, float]:
    """``(images per second from the second batch to the end of the epoch, CPU milliseconds per image)``; the
    CPU time is the whole epoch's in every process (workers' start-up included), so it holds on a busy machine
    where the wall-clock rate depends on what else runs."""
    start_cpu = cpu_seconds()
    batches = make()
    it = iter(batches)
    total = len(next(it)[1])
    n, start = 0, time.perf_counter()
    for _, target, _ in it:
        n += len(target)
    seconds = time.perf_counter() - start
    del it, batches  # the workers stop and are joined: their CPU time is counted
    gc.collect()
    return n / seconds, 1000 * (cpu_seconds() - start_cpu) / (total + n)


def run(folder: Path, wds: Path, workers: list[int], size: int, batch_size: int) -> list[dict]:
    torch.set_num_threads(1)
    rows = []
    for what, decode in (("bytes", False), ("pipeline", True)):
        for w in workers:
            row: dict = {"what": what, "workers": w}
            for kind, data in (("folder", folder), ("wds", wds)):
                row[kind], row[f"{kind}_cpu"] = measure(lambda: loader(data, kind, size, batch_size, w, decode))
            rows.append({**row, "ratio": row["wds"] / row["folder"], "cpu_ratio": row["folder_cpu"] / row["wds_cpu"]})
    return rows


def many_files(out: Path, n: int, source: Path) -> dict:
    """List and read ``n`` small files in 10 class folders vs the same samples in 1000-sample shards."""
    image = next(source.rglob("*.jpg")).read_bytes()[:2048]
    folder = out / "many_folder"
    if not (folder / ".complete").is_file():
        if folder.exists() and not (folder / ".partial").is_file():  # not ours (ours carries a marker): keep it
            raise SystemExit(f"{folder} exists and was not written by this benchmark: move it, or give --data "
                             f"in another folder (--many_files writes beside it)")
        shutil.rmtree(folder, ignore_errors=True)  # an interrupted earlier write of ours
        folder.mkdir(parents=True)
        (folder / ".partial").write_text("")
        for i in range(n):
            (folder / f"c{i % 10}").mkdir(exist_ok=True)
            (folder / f"c{i % 10}" / f"{i:07d}.jpg").write_bytes(image)
        (folder / ".partial").rename(folder / ".complete")
    wds = out / "many_wds"
    if not (wds / "_info.json").is_file():
        shards.write_wds_split(wds, "train", ((f"{i:07d}", image, i % 10) for i in range(n)),
                               [f"c{c}" for c in range(10)], 2, max_samples=1000)
    start = time.perf_counter()
    files = sorted(folder.rglob("*.jpg"))
    listed = time.perf_counter() - start
    total = sum(len(f.read_bytes()) for f in files)
    folder_s = time.perf_counter() - start
    start = time.perf_counter()
    count = sum(1 for s in shards.ShardSet(wds).shards("train") for _ in shards.iter_samples(s.url))
    wds_s = time.perf_counter() - start
    assert count == len(files) == n and total
    return {"n": n, "list_s": listed, "folder_img_s": n / folder_s, "wds_img_s": n / wds_s}


def print_rows(rows: list[dict]) -> None:
    print(f"{'read':10s} {'workers':>7s} {'folders img/s':>14s} {'shards img/s':>13s} {'shards/folders':>15s} "
          f"{'folders CPU ms/img':>19s} {'shards CPU ms/img':>18s} {'per core':>9s}")
    for r in rows:
        print(f"{r['what']:10s} {r['workers']:7d} {r['folder']:14.0f} {r['wds']:13.0f} {r['ratio']:14.2f}x "
              f"{r['folder_cpu']:19.3f} {r['wds_cpu']:18.3f} {r['cpu_ratio']:8.2f}x")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=ROOT / "data" / "photos_large")
    p.add_argument("--per_class", type=int, default=250, help="training images per class (12 classes)")
    p.add_argument("--shard_samples", type=int, default=250)
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    p.add_argument("-b", "--batch_size", type=int, default=32)
    p.add_argument("--image_size", type=int, default=224)
    p.add_argument("--many_files", type=int, default=0, help="also time N small files vs N samples in shards")
    p.add_argument("--quick", action="store_true", help="a smoke run: few images, one worker")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    if args.quick:
        args.workers, args.per_class, args.shard_samples, args.batch_size = [1], 8, 16, 8
    folder = make_photo_set(args.data, train_per_class=args.per_class, val_per_class=2)
    wds = args.data.with_name(f"{args.data.name}_wds{args.shard_samples}")
    if not (wds / "_info.json").is_file():
        write_wds_shards(folder, wds, jobs=2, max_samples=args.shard_samples)
    print_rows(run(folder, wds, args.workers, args.image_size, args.batch_size))
    if args.many_files:
        r = many_files(args.data.parent, args.many_files, folder)
        ratio = r["wds_img_s"] / r["folder_img_s"]
        print(f"{r['n']} small files: listing {r['list_s']:.1f} s; list + read {r['folder_img_s']:.0f} files/s "
              f"in class folders vs {r['wds_img_s']:.0f} samples/s in shards ({ratio:.2f}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
