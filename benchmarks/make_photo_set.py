"""Build a reproducible set of ImageNet-like JPEGs from scikit-image's bundled sample photos.

Each class is one source photo (the astronaut, the cat, coffee, a rocket, ...); each image is a random
crop of it (10-100% of the area, aspect 3/4-4/3), maybe mirrored, resized to about 500x375 (+-15% per
side, either orientation) and saved as a quality-90 JPEG. So the benchmarks decode real photographic
content of realistic size, with no download.

    python benchmarks/make_photo_set.py --out data/photos --train_per_class 100 --val_per_class 20
"""
from __future__ import annotations

import argparse
import logging
import math
import sys
import warnings
from pathlib import Path

import numpy as np
from PIL import Image

logger = logging.getLogger("make_photo_set")

# scikit-image sample images that ship with the package (no pooch download): colour ones and a few
# grayscale textures, which become 3-channel JPEGs like ImageNet's occasional grey photo.
SOURCES = ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry", "retina",
           "camera", "grass", "gravel", "brick", "coins")


def load_source(name: str) -> Image.Image:
    import skimage.data
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        array = getattr(skimage.data, name)()
    if array.ndim == 2:
        array = np.repeat(array[:, :, None], 3, axis=2)
    return Image.fromarray(np.ascontiguousarray(array[:, :, :3]).astype(np.uint8))


def random_photo(source: Image.Image, rng: np.random.Generator, size: tuple[int, int] = (500, 375)) -> Image.Image:
    """A random crop of ``source`` resized to about ``size`` (width, height), maybe mirrored or portrait."""
    w, h = source.size
    for _ in range(20):
        area = w * h * rng.uniform(0.1, 1.0)
        aspect = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
        cw, ch = round(math.sqrt(area * aspect)), round(math.sqrt(area / aspect))
        if 0 < cw <= w and 0 < ch <= h:
            break
    else:
        cw, ch = w, h
    left, top = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
    out_w, out_h = (size if rng.random() < 0.75 else size[::-1])  # a quarter portrait
    out_w, out_h = round(out_w * rng.uniform(0.85, 1.15)), round(out_h * rng.uniform(0.85, 1.15))
    image = source.crop((left, top, left + cw, top + ch)).resize((out_w, out_h), Image.BICUBIC)
    return image.transpose(Image.FLIP_LEFT_RIGHT) if rng.random() < 0.5 else image


def make_photo_set(out: Path, train_per_class: int = 100, val_per_class: int = 20, classes: int = len(SOURCES),
                   seed: int = 0, quality: int = 90, test_per_class: int = 0) -> Path:
    """Write ``out/{train,val[,test]}/<source>/<n>.jpg`` (a test split when ``test_per_class``); idempotent (a
    complete set with the same counts is kept)."""
    names = SOURCES[:classes]
    counts = {"train": train_per_class, "val": val_per_class, **({"test": test_per_class} if test_per_class else {})}
    stamp = out / ".photo_set"
    want = f"{names} {counts} seed={seed} q={quality}"
    if stamp.is_file() and stamp.read_text() == want:
        return out
    rng = np.random.default_rng(seed)
    for name in names:
        source = load_source(name)
        for split, n in counts.items():
            folder = out / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for old in folder.glob("*.jpg"):
                old.unlink()
            for i in range(n):
                random_photo(source, rng).save(folder / f"{i:05d}.jpg", quality=quality)
    stamp.write_text(want)
    logger.info("wrote %d classes x (%d train, %d val) JPEGs to %s", len(names), train_per_class, val_per_class, out)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("data/photos"))
    p.add_argument("--train_per_class", type=int, default=100)
    p.add_argument("--val_per_class", type=int, default=20)
    p.add_argument("--test_per_class", type=int, default=0, help="images per class of a test split (0: none)")
    p.add_argument("--classes", type=int, default=len(SOURCES), choices=range(2, len(SOURCES) + 1),
                   metavar=f"2..{len(SOURCES)}")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    make_photo_set(args.out, args.train_per_class, args.val_per_class, args.classes, args.seed,
                   test_per_class=args.test_per_class)
    print(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
