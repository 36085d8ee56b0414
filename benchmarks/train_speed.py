"""Training images per second: ``main.py --train`` vs a plain PyTorch reference loop, side by side.

The reference is what a user would write from torchvision's tutorials: ``ImageFolder`` with the
standard Pillow transforms (RandomResizedCrop, ToTensor, Normalize per image), a DataLoader with the
same workers and batch size, and a minimal loop (forward, cross-entropy, backward, SGD step). Ours is
``main.py --train`` itself, in a subprocess, read back from the per-epoch ``img_per_s`` of its
``metrics.json`` (the training pass only, validation excluded, as for the reference).

Two workloads, resnet18 from scratch, each with a few settings of ours:
  digits   the bundled digits at 32x32 (RandomResizedCrop 0.6-1), batch 64: --cache_dataset memory,
           then also --channels_last, then also bf16 --amp
  photos   96 photo-set JPEGs at 224x224 (RandomResizedCrop 0.08-1, flip), batch 32: the default input
           path, then --channels_last. The model's step dominates here (about 10 img/s on 2 cores), so
           the input path can only keep up; expect run-to-run noise of about 10%.

Each side runs ``--epochs`` epochs; the first (warm-up: worker start, allocator, oneDNN primitive
caches) is dropped and the rest averaged.

    python benchmarks/train_speed.py             # both workloads, about 4 minutes on 2 cores
    python benchmarks/train_speed.py --quick     # a smoke run on tiny subsets
"""
from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.data_pipeline import standard_transform  # noqa: E402
from benchmarks.make_photo_set import make_photo_set  # noqa: E402


def reference_rates(data: Path, size: int, rrc_scale: tuple[float, float], hflip: bool, batch_size: int,
                    workers: int, epochs: int, seed: int = 0) -> list[float]:
    """Images/s of each epoch of the plain loop (training pass only)."""
    import torchvision
    from torchvision import datasets
    torch.manual_seed(seed)
    dataset = datasets.ImageFolder(str(data / "train"), transform=standard_transform(size, rrc_scale, hflip))
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=workers,
                                         drop_last=len(dataset) % batch_size == 1, persistent_workers=workers > 0)
    model = torchvision.models.resnet18(num_classes=len(dataset.classes))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    criterion = torch.nn.CrossEntropyLoss(label_smoothing=0.1)
    rates = []
    for _ in range(epochs):
        model.train()
        start, seen = time.perf_counter(), 0
        for images, target in loader:
            loss = criterion(model(images), target)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            seen += images.shape[0]
        rates.append(seen / (time.perf_counter() - start))
    return rates


def our_rates(data: Path, size: int, rrc_scale: tuple[float, float], hflip: bool, batch_size: int, workers: int,
              epochs: int, extra: list[str]) -> list[float]:
    """Images/s of each epoch of ``main.py --train`` (its metrics.json ``img_per_s``)."""
    with tempfile.TemporaryDirectory() as out:
        cmd = [sys.executable, str(ROOT / "main.py"), "--train", "--data", str(data), "--arch", "resnet18",
               "--image_size", str(size), str(size), "--train_resize", "rrc", "--rrc_scale", *map(str, rrc_scale),
               "--hflip", "0.5" if hflip else "0", "-b", str(batch_size), "-j", str(workers), "--epochs", str(epochs),
               "--lr", "0.1", "--momentum", "0.9", "--weight_decay", "5e-4", "--label_smoothing", "0.1",
               "--warmup", "0", "--seed", "0", "--output", out, "--tag", "speed", "--no_progress", *extra]
        proc = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"main.py failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
        history = json.loads((Path(out) / "resnet18" / "speed" / "metrics.json").read_text())["history"]
    return [row["img_per_s"] for row in history]


def steady(rates: list[float]) -> float:
    return sum(rates[1:]) / len(rates[1:]) if len(rates) > 1 else rates[0]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--digits", type=Path, default=ROOT / "data" / "digits")
    p.add_argument("--photos", type=Path, default=ROOT / "data" / "photos_train_speed")
    p.add_argument("--epochs", type=int, default=3, help="per side and workload; the first is warm-up")
    p.add_argument("-j", "--workers", type=int, default=2)
    p.add_argument("--quick", action="store_true", help="a smoke run: 2 epochs of tiny subsets, photos at 64x64")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    if args.quick:
        args.epochs = 2
    if not (args.digits / "train").is_dir():
        subprocess.run([sys.executable, str(ROOT / "utils" / "make_digits.py"), "--out", str(args.digits)], check=True)
    make_photo_set(args.photos, train_per_class=2 if args.quick else 8, val_per_class=1,
                   classes=4 if args.quick else 12)
    cache = ["--cache_dataset", "memory"]
    photo_size = 64 if args.quick else 224
    workloads = [("digits 32x32", args.digits, 32, (0.6, 1.0), False, 64,
                  [cache, cache + ["--channels_last"], cache + ["--channels_last", "--amp"]]),
                 (f"photos {photo_size}x{photo_size}", args.photos, photo_size, (0.08, 1.0), True, 32,
                  [[], ["--channels_last"]])]
    rows = []
    for name, data, size, scale, hflip, batch, variants in workloads:
        ref = steady(reference_rates(data, size, scale, hflip, batch, args.workers, args.epochs))
        for extra in variants[:1] if args.quick else variants:
            ours = steady(our_rates(data, size, scale, hflip, batch, args.workers, args.epochs, extra))
            rows.append((name, ref, ours, " ".join(extra)))
    print(f"{'workload':16s} {'reference img/s':>15s} {'main.py img/s':>13s} {'ratio':>6s}  main.py extra flags")
    for name, ref, ours, extra in rows:
        print(f"{name:16s} {ref:15.0f} {ours:13.0f} {ours / ref:5.2f}x  {extra or '(none)'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
