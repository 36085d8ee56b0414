"""Convert any dataset this project reads (class folders, txt lists, zip archives, csv tables, Hugging Face
datasets) into another storage format, in parallel, with a progress bar.

    python utils/convert_data.py --data SRC [--dataset KIND] --to parquet|wds --out DST [-j N] [--shard_samples N]
                                 [--multi_label [--label_delim D] [--allow_empty_labels]]

``--to parquet`` writes the Hugging Face Hub's layout, ``DST/data/{train,validation,test}-NNNNN-of-MMMMM.parquet``
(columns ``image`` and ``label``, a ClassLabel of the class names), which ``--dataset hf --data DST`` reads and
the Hub serves as is. ``--to wds`` writes WebDataset shards, ``DST/{train,val,test}-NNNNNN.tar`` with timm's
``_info.json``, which ``--dataset wds --data DST`` reads (and timm's ``wds/`` reader); their samples are in a
seeded shuffled order, so that every shard holds every class, at most N (``--shard_samples``, default 1000) per
shard, and a key's dots become underscores. For parquet every split of SRC is converted in the order training
reads it (the same seed trains the same run on either).
The images are read by N processes (default: all cores) and N files are written at a time (parquet: at most 2, each
holding up to 512 MB in memory; the same files, byte for byte, whatever N is), into ``.DST.partial`` beside DST,
renamed to DST at the end: a killed conversion leaves no half dataset, and an existing DST is refused. KIND defaults
to the layout found at SRC (as utils/check_images.py detects it).
``--multi_label`` (with ``--label_delim``, ``--allow_empty_labels``, as main.py takes them) reads SRC's label sets
and keeps them: parquet gets a ``Sequence(ClassLabel)`` label column, shards ``.cls`` files ``1,4``; read the result
back with ``--multi_label`` (``converted_from.json`` records it).
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dataloader.checking import detect_kind  # noqa: E402
from dataloader.convert import WRITERS, convert_dataset  # noqa: E402
from dataloader.datasets import LAYOUTS, Columns, DatasetError  # noqa: E402
from dataloader.io import ImageDecodeError  # noqa: E402
from dataloader.shards import DEFAULT_SHARD_SAMPLES  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="the dataset to convert (a folder; --dataset hf: or a Hub name)")
    parser.add_argument("--dataset", choices=sorted(LAYOUTS), default=None, help="its layout (default: detected)")
    parser.add_argument("--to", choices=sorted(WRITERS), required=True, help="the output format")
    parser.add_argument("--out", required=True, help="the new dataset's folder (must not exist)")
    parser.add_argument("-j", "--workers", type=int, default=os.cpu_count() or 1,
                        help="reading processes (and shard files written at a time; parquet: at most 2)")
    parser.add_argument("--shard_samples", type=int, default=None,
                        help=f"--to wds: at most this many samples per shard (default {DEFAULT_SHARD_SAMPLES})")
    Columns.add_flags(parser)
    parser.add_argument("--no_progress", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    src = Path(args.data)
    kind = args.dataset or (detect_kind(src) if src.is_dir() else "hf")
    try:
        out = convert_dataset(src, kind, args.to, args.out, jobs=max(1, args.workers), progress=not args.no_progress,
                              columns=Columns.from_args(args), shard_samples=args.shard_samples)
    except (DatasetError, ImageDecodeError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    logging.info("wrote %s (%s) from %s (--dataset %s)", out, args.to, src, kind)
    return 0


if __name__ == "__main__":
    sys.exit(main())
