"""Check every image of a dataset (class folders, txt lists or zip archives) before training on it.

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

    python utils/check_images.py DATA [--dataset folder|txt|zip] [--move_bad_to DIR] [-j N] [--strict]
                                      [--max_image_pixels N]

A missing DATA, or a --move_bad_to folder inside DATA (moved files would become a class), is refused
with one line and exit code 2. --move_bad_to moves only what lives in DATA: a bad symbolic link is moved
itself, never the file it points to, and a bad file whose folder lies outside DATA is left (and said so).
"""
from __future__ import annotations

import argparse
import logging
import multiprocessing
import os
import shutil
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from PIL import UnidentifiedImageError  # noqa: E402

from dataloader.datasets import LAYOUTS, DatasetError, ZipReader  # noqa: E402
from dataloader.io import (DEFAULT_MAX_IMAGE_PIXELS, ImageDecodeError, ImageTooLarge, decode_rgb,  # noqa: E402
                           is_image_name, open_image)
from utils.walk import visible_files, visible_subfolders  # noqa: E402

logger = logging.getLogger("check_images")
SPLITS = ("train", "val", "test")
UNUSUAL_MODES = {"CMYK": "CMYK", "I;16": "16-bit", "I;16B": "16-bit", "I;16L": "16-bit", "I": "32-bit integer",
                 "F": "32-bit float"}


@dataclass(frozen=True)
class Finding:
    """One checked image: where it is, its split and class, and what (if anything) is wrong."""
    split: str
    label: str
    source: str            # a file path, or "<archive>:<member>"
    status: str            # ok | bad | unusual | stray
    reason: str = ""


def detect_kind(root: Path) -> str:
    """The dataset layout: zip archives, txt lists, or class folders."""
    if (root / "train.zip").is_file():
        return "zip"
    if (root / "train.txt").is_file():
        return "txt"
    return "folder"


def check_bytes(data: bytes, name: str, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> tuple[str, str]:
    """``(status, reason)`` for one encoded image; one over ``max_pixels`` (0: no limit) is bad, from its header."""
    if not data:
        return "bad", "zero-byte file"
    try:
        with open_image(data, name, max_pixels) as im:
            mode, info = im.mode, dict(im.info)
            im.load()
    except ImageTooLarge as e:
        return "bad", f"too large: {str(e).removeprefix(name + ': ')}"
    except UnidentifiedImageError:
        return "bad", "not an image (Pillow cannot identify it)"
    except (OSError, SyntaxError, ValueError) as e:
        kind = "truncated" if "truncated" in str(e).lower() else "unreadable"
        return "bad", f"{kind}: {e}"
    try:
        decode_rgb(data, name, max_pixels)
    except ImageDecodeError as e:
        return "bad", f"unreadable by the training decoder: {e}"
    if mode in UNUSUAL_MODES:
        return "unusual", f"{UNUSUAL_MODES[mode]} image (mode {mode}); training converts it to 8-bit RGB"
    if mode in ("P", "PA") and ("transparency" in info or mode == "PA"):
        return "unusual", f"palette image with transparency (mode {mode}); training drops the transparency"
    return "ok", ""


Task = tuple[str, str, str, "str | None", int]  # split, class, source, archive, max_pixels


def _check_task(task: Task) -> Finding:
    split, label, source, archive, max_pixels = task
    name = source if archive is None else f"{archive}:{source}"
    try:
        if archive is None:
            with open(source, "rb") as f:
                data = f.read()
        else:  # the member's size is checked from the archive's directory before it is inflated
            data = ZipReader(Path(archive), max_pixels)(source)
    except OSError as e:
        return Finding(split, label, name, "bad", f"cannot read: {e}")
    except ImageTooLarge as e:
        return Finding(split, label, name, "bad", f"too large: {str(e).removeprefix(name + ': ')}")
    status, reason = check_bytes(data, name, max_pixels)
    return Finding(split, label, name, status, reason)


def _tasks(root: Path, kind: str, max_pixels: int) -> tuple[list[Task], list[Finding]]:
    """Every image to check, and findings already known without decoding (stray files, list errors).

    A structural error (a malformed line, a missing file, an unknown class) is one bad finding, and the
    rest of its split is still checked."""
    layout = LAYOUTS[kind]
    findings: list[Finding] = []
    try:
        class_names = layout.classes(root)
    except DatasetError as e:
        return [], [Finding("-", "-", str(root), "bad", str(e))]
    tasks: list[Task] = []
    for split in SPLITS:
        if not layout.exists(root, split):
            continue
        errors: list[DatasetError] = []
        try:
            samples = layout.samples(root, split, class_names, errors=errors)
        except DatasetError as e:  # nothing of the split can be read (e.g. not a zip archive)
            errors.append(e)
            samples = []
        findings += [Finding(split, "-", str(root), "bad", str(e)) for e in errors]
        archive = str(root / f"{split}.zip") if kind == "zip" else None
        tasks += [(split, class_names[label], source, archive, max_pixels) for source, label in samples]
        if kind == "folder":
            for class_dir in visible_subfolders(root / split):  # the files training sees, less its images
                findings += [Finding(split, class_dir.name, str(f), "stray", "not an image extension: training "
                                     "ignores it") for f in visible_files(class_dir) if not is_image_name(f.name)]
    return tasks, findings


def check_dataset(root: str | Path, kind: str | None = None, workers: int = 1, progress: bool = False,
                  max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> list[Finding]:
    """Check every image of the dataset at ``root``; returns one finding per image (and stray file)."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"dataset root {str(root)!r} does not exist")
    tasks, findings = _tasks(root, kind or detect_kind(root), max_pixels)
    from tqdm import tqdm
    bar = tqdm(total=len(tasks), desc="checking", disable=not progress, dynamic_ncols=True)
    if workers > 1 and len(tasks) > 1:
        with multiprocessing.get_context("fork").Pool(workers) as pool:
            for finding in pool.imap(_check_task, tasks, chunksize=32):
                findings.append(finding)
                bar.update()
    else:
        for task in tasks:
            findings.append(_check_task(task))
            bar.update()
    bar.close()
    return findings


def move_bad(findings: list[Finding], root: Path, target: Path) -> tuple[list[tuple[str, str]], list[str]]:
    """Move bad files below ``target`` keeping their path relative to ``root``; returns ``(moved, kept)``:
    the ``(from, to)`` pairs, and why each other bad file was left where it is.

    Only what lives in the dataset moves: a symbolic link is moved itself (re-made at ``target`` pointing
    to the same file), never the file it points to; a file whose folder lies outside ``root`` (a list line
    naming an outside path, a class folder linked from elsewhere) is left, and so are zip members. A file
    already at the destination is never replaced: the moved one gets a ``.1``, ``.2``... suffix."""
    moved, kept = [], []
    real_root = root.resolve()
    for f in findings:
        src = Path(f.source)
        if f.status != "bad" or not os.path.lexists(src) or (src.is_dir() and not src.is_symlink()):
            continue  # structural errors (the dataset root) and zip members (archive:member)
        folder = src.parent.resolve()
        if not folder.is_relative_to(real_root):
            kept.append(f"{src}: it lies outside the dataset ({folder}); fix or remove it there")
            continue
        dst = _free_path(target / folder.relative_to(real_root) / src.name)
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_symlink():  # the link moves, with a target that still names the same file from its new place
            link = os.readlink(src)
            os.symlink(link if os.path.isabs(link) else os.path.join(os.path.abspath(src.parent), link), dst)
            src.unlink()
        else:
            shutil.move(str(src), dst)
        moved.append((str(src), str(dst)))
    return moved, kept


def _free_path(path: Path) -> Path:
    """``path``, or ``path.1``, ``path.2``... the first that does not exist (a dangling link counts)."""
    candidate, n = path, 0
    while os.path.lexists(candidate):
        n += 1
        candidate = path.with_name(f"{path.name}.{n}")
    return candidate


def summarise(findings: list[Finding]) -> list[str]:
    """Lines of a per-split, per-class table: images, bad, unusual."""
    counts: Counter = Counter()
    for f in findings:
        if f.status != "stray":
            counts[(f.split, f.label, "images")] += 1
        counts[(f.split, f.label, f.status)] += 1
    keys = sorted({(s, c) for s, c, _ in counts})
    lines = [f"{'split':<8}{'class':<24}{'images':>8}{'bad':>6}{'unusual':>9}{'stray':>7}"]
    for split, label in keys:
        lines.append(f"{split:<8}{label[:23]:<24}{counts[(split, label, 'images')]:>8}{counts[(split, label, 'bad')]:>6}"
                     f"{counts[(split, label, 'unusual')]:>9}{counts[(split, label, 'stray')]:>7}")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data", help="dataset root")
    parser.add_argument("--dataset", choices=sorted(LAYOUTS), default=None, help="layout (default: detected)")
    parser.add_argument("--move_bad_to", default=None, help="move bad files into this folder")
    parser.add_argument("-j", "--workers", type=int, default=os.cpu_count() or 1, help="parallel worker processes")
    parser.add_argument("--strict", action="store_true", help="unusual images count as bad for the exit code")
    parser.add_argument("--max_image_pixels", type=int, default=DEFAULT_MAX_IMAGE_PIXELS,
                        help="images of more pixels are bad (checked from the header, never decoded); 0 = no limit")
    parser.add_argument("--no_progress", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    root = Path(args.data)
    if not root.is_dir():
        parser.error(f"dataset root {str(root)!r} does not exist or is not a folder")
    if args.max_image_pixels < 0:
        parser.error(f"--max_image_pixels must be >= 0 (0 = no limit), got {args.max_image_pixels}")
    if args.move_bad_to and Path(args.move_bad_to).resolve().is_relative_to(root.resolve()):
        parser.error(f"--move_bad_to {args.move_bad_to} is inside the dataset {root}: moved files would become "
                     f"a class of their own; choose a folder outside it")
    findings = check_dataset(root, args.dataset, max(1, args.workers), progress=not args.no_progress,
                             max_pixels=args.max_image_pixels)
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
            print(f"{status['bad'] - len(moved) - len(kept)} bad entries were not moved (zip members or list "
                  f"errors): fix them in place")
    return 1 if status["bad"] or (args.strict and status["unusual"]) else 0


if __name__ == "__main__":
    sys.exit(main())
