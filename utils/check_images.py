"""Check every image of a dataset (class folders, txt lists, zip archives, csv tables, WebDataset shards or a
Hugging Face dataset) before training on it.

Each image is fully decoded, with the project's own decoder (as training reads it) and with Pillow
(which notices truncation that libjpeg/libpng tolerate). Reported, with the reason:

  bad      zero-byte, non-image (an image name but not an image), unreadable or truncated files, images
           over --max_image_pixels (checked from the header, never decoded: decompression bombs), zip
           members too large for that limit, and structural errors (a malformed list line, a missing file,
           an unknown class, one file under two labels: a class folder linked to another class, files
           linked across classes, two list lines naming one file), each reported with the rest of its
           split still checked
  unusual  images that decode but in an unusual mode (CMYK, 16-bit, palette with transparency):
           training converts them to RGB, but they are worth a look
  stray    files in class folders without an image extension (training ignores them)

A summary counts images, bad and unusual files per split and class. The exit code is 1 when any file
is bad (with ``--strict``, also when any is unusual), else 0.

    python utils/check_images.py DATA [--dataset folder|txt|zip|csv|wds|hf] [--move_bad_to DIR] [-j N] [--strict]
                                      [--max_image_pixels N] [--path_col NAME] [--label_col NAME] [--image_col NAME]
                                      [--multi_label [--label_delim D] [--allow_empty_labels]]  (label sets)

A missing DATA, or a --move_bad_to folder inside DATA (moved files would become a class), is refused
with one line and exit code 2. --move_bad_to moves only what lives in DATA: a bad symbolic link is moved
itself, never the file it points to, and a bad file whose folder lies outside DATA is left (and said so).
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dataloader.checking import check_dataset, detect_kind, is_shard_source, move_bad, summarise  # noqa: E402
from dataloader.datasets import LAYOUTS, Columns  # noqa: E402
from dataloader.io import DEFAULT_MAX_IMAGE_PIXELS  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data", help="dataset root")
    parser.add_argument("--dataset", choices=sorted(LAYOUTS), default=None, help="layout (default: detected)")
    parser.add_argument("--move_bad_to", default=None, help="move bad files into this folder")
    parser.add_argument("-j", "--workers", type=int, default=os.cpu_count() or 1, help="parallel worker processes")
    parser.add_argument("--strict", action="store_true", help="unusual images count as bad for the exit code")
    parser.add_argument("--max_image_pixels", type=int, default=DEFAULT_MAX_IMAGE_PIXELS,
                        help="images of more pixels are bad (checked from the header, never decoded); 0 = no limit")
    Columns.add_flags(parser)
    parser.add_argument("--no_progress", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    root = args.data if is_shard_source(args.data) else Path(args.data)
    if isinstance(root, Path) and not root.is_dir():
        parser.error(f"dataset root {str(root)!r} does not exist or is not a folder")
    kind = args.dataset or (detect_kind(root) if isinstance(root, Path) else "wds")
    if args.max_image_pixels < 0:
        parser.error(f"--max_image_pixels must be >= 0 (0 = no limit), got {args.max_image_pixels}")
    if args.move_bad_to and kind == "wds":
        parser.error("--move_bad_to moves files, and bad samples of shards are inside tar files: write them again")
    if args.move_bad_to and Path(args.move_bad_to).resolve().is_relative_to(root.resolve()):
        parser.error(f"--move_bad_to {args.move_bad_to} is inside the dataset {root}: moved files would become "
                     f"a class of their own; choose a folder outside it")
    findings = check_dataset(root, kind, max(1, args.workers), progress=not args.no_progress,
                             max_pixels=args.max_image_pixels,
                             columns=Columns.from_args(args))
    for f in findings:
        if f.status != "ok":
            print(f"{f.status.upper():8}{f.source}: {f.reason}")
    print("\n".join(summarise(findings)))
    status = Counter(f.status for f in findings)
    print(f"checked {sum(v for k, v in status.items() if k != 'stray')} images: {status['bad']} bad, "
          f"{status['unusual']} unusual, {status['stray']} stray files")
    if args.move_bad_to and status["bad"]:
        moved, kept = move_bad(findings, root, Path(args.move_bad_to))
        for src, dst in moved:
            print(f"moved {src} -> {dst}")
        for why in kept:
            print(f"not moved {why}")
        if len(moved) + len(kept) < status["bad"]:
            print(f"{status['bad'] - len(moved) - len(kept)} not moved (zip members, list errors): fix them in place")
    return 1 if status["bad"] or (args.strict and status["unusual"]) else 0


if __name__ == "__main__":
    sys.exit(main())
