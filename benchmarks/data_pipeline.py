"""Training input pipeline throughput: ours vs torchvision's ImageFolder with the standard transforms.

Both read the same JPEGs (``benchmarks/make_photo_set.py``) and produce normalised float batches of
``N x 3 x 224 x 224`` with RandomResizedCrop and a horizontal flip, with the same worker processes:

  standard  ImageFolder + Pillow: RandomResizedCrop, RandomHorizontalFlip, ToTensor, Normalize per
            image in the workers, float batches collated across processes
  ours      ClassificationDataset + create_loader: decode to uint8 (torchvision.io), RandomResizedCrop
            and flip on uint8 tensors, uint8 batches across processes, then one batched float
            conversion and normalisation in the main process (BatchPreprocessor)

The decode-only rates (one process, no transforms) are the ceiling of any pipeline that decodes full
JPEGs. Throughput is counted from the second batch on (the worker start-up is left out of both).

    python benchmarks/data_pipeline.py            # the full run: 1 and 2 workers, ~1 minute
    python benchmarks/data_pipeline.py --quick    # a smoke run
"""
from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path
from typing import Callable, Iterable

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.make_photo_set import make_photo_set  # noqa: E402

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def standard_transform(size: int, rrc_scale: tuple[float, float] = (0.08, 1.0), hflip: bool = True):
    """The tutorials' training transform: Pillow RandomResizedCrop (and flip), ToTensor, Normalize."""
    from torchvision import transforms
    ops = [transforms.RandomResizedCrop(size, scale=rrc_scale)] + ([transforms.RandomHorizontalFlip()] if hflip else [])
    return transforms.Compose(ops + [transforms.ToTensor(), transforms.Normalize(MEAN, STD)])


def standard_loader(root: Path, size: int, batch_size: int, workers: int) -> Iterable:
    from torchvision import datasets
    dataset = datasets.ImageFolder(str(root / "train"), transform=standard_transform(size))
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=workers,
                                       drop_last=True)


def our_loader(root: Path, size: int, batch_size: int, workers: int) -> Iterable:
    from dataloader import BatchPreprocessor, ClassificationDataset, create_loader, create_transform
    transform = create_transform(True, (size, size), train_resize="rrc", hflip=0.5)
    dataset = ClassificationDataset(root, "folder", "train", transform=transform)
    loader = create_loader(dataset, batch_size=batch_size, workers=workers, train=True, seed=0)
    preprocess = BatchPreprocessor(MEAN, STD, torch.device("cpu"))
    return ((preprocess(images), target) for images, target, _ in loader)


def rate(batches: Iterable, images: int, sync: Callable[[], None] | None = None) -> float:
    """Images per second from the second batch until ``images`` more have been produced (``sync``, e.g.
    ``torch.cuda.synchronize``, waits for batches made on a device before the clock stops)."""
    it = iter(batches)
    first, _ = next(it)
    n, start = 0, time.perf_counter()
    while n < images:
        try:
            x, _ = next(it)
        except StopIteration:
            break
        assert x.dtype == torch.float32 and x.shape[-2:] == first.shape[-2:]
        n += x.shape[0]
    if sync is not None:
        sync()
    return n / (time.perf_counter() - start)


def decode_rates(files: list[Path]) -> dict[str, float]:
    """One process decoding every file: torchvision.io (libjpeg-turbo) and Pillow (+ RGB conversion)."""
    from PIL import Image
    from torchvision.io import decode_jpeg, read_file
    out = {}
    for name, decode in (("torchvision.io.decode_jpeg", lambda f: decode_jpeg(read_file(str(f)))),
                         ("PIL.Image.open().convert('RGB')", lambda f: Image.open(f).convert("RGB"))):
        start = time.perf_counter()
        for f in files:
            decode(f)
        out[name] = len(files) / (time.perf_counter() - start)
    return out


def run(root: Path, workers: list[int], images: int, batch_size: int, size: int) -> list[dict]:
    torch.set_num_threads(1)  # the main process only normalises; leave the cores to the workers
    rows = []
    files = sorted((root / "train").rglob("*.jpg"))[:max(64, images // 4)]
    for name, r in decode_rates(files).items():
        rows.append({"pipeline": f"decode only: {name}", "workers": 1, "img_s": r})
    for w in workers:
        pair: dict[str, float] = {}
        for name, make in (("standard (ImageFolder + PIL transforms)", standard_loader),
                           ("ours (uint8 decode/transforms, batched normalise)", our_loader)):
            pair[name] = rate(make(root, size, batch_size, w), images)
            rows.append({"pipeline": name, "workers": w, "img_s": pair[name]})
        std, ours = pair.values()
        rows[-1]["ratio"] = ours / std
    return rows


def print_table(rows: list[dict]) -> None:
    print(f"{'pipeline':54s} {'workers':>7s} {'img/s':>8s} {'img/s/worker':>12s} {'ours/std':>8s}")
    for r in rows:
        ratio = f"{r['ratio']:.2f}x" if "ratio" in r else ""
        print(f"{r['pipeline']:54s} {r['workers']:7d} {r['img_s']:8.0f} {r['img_s'] / r['workers']:12.0f} {ratio:>8s}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=ROOT / "data" / "photos", help="made by make_photo_set.py if absent")
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--images", type=int, default=1024, help="images timed per pipeline and worker count")
    p.add_argument("-b", "--batch_size", type=int, default=32)
    p.add_argument("--image_size", type=int, default=224)
    p.add_argument("--quick", action="store_true", help="a smoke run: few images, one worker")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    if args.quick:
        args.workers, args.images, args.batch_size = [1], 64, 16
        make_photo_set(args.data, train_per_class=8, val_per_class=2, classes=4)
    else:
        make_photo_set(args.data)
    rows = run(args.data, args.workers, args.images, args.batch_size, args.image_size)
    print_table(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
