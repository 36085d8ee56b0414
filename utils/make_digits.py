"""Write scikit-learn's handwritten digits as a PNG class-folder dataset (the bundled default data).

1,797 real 8x8 images, upscaled to 32x32 RGB, split 70/15/15 stratified with a fixed seed into
``OUT/{train,val,test}/<0-9>/<index>.png``. Idempotent: an existing complete dataset is left alone.

    python utils/make_digits.py [--out data/digits] [--txt DIR] [--zip DIR] [--csv DIR] [--hf DIR]
        [--wds DIR [--shard_samples N]] [--multi_label DIR] [--per_class N]

``--hf DIR`` writes the Hugging Face Hub's parquet layout (``DIR/data/{train,validation,test}-*.parquet``, read
by ``--dataset hf``) through the converter of ``utils/convert_data.py``.
``--multi_label DIR`` also writes the multi-label set, read by ``--dataset csv --multi_label``: 64x64 mosaics
of 1-3 digits in the cells of a 2x2 grid (the others black), 4,000 / 800 / 800 for train / val / test, each split
drawn from that split's source digits only, with a fixed seed (byte-identical each time), as
``DIR/{train,val,test}.csv`` (``path,label``, e.g. ``images/train/00007.png,1 4 7``: the digits shown, ascending,
one space apart), ``DIR/images/<split>/NNNNN.png`` and ``DIR/classes.txt``.
``--per_class N`` keeps the first N images of each class in each split: a tiny set for smoke runs
(``SMOKE=1`` in the z_task_shell recipes); with ``--multi_label``, 10 x N mosaics per split.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dataloader.convert import convert_dataset  # noqa: E402
from dataloader.digits import MOSAIC_SIZES, SPLITS, make_digits, make_mosaic  # noqa: E402
from dataloader.layout_writers import (  # noqa: E402
    write_csv_tables,
    write_txt_lists,
    write_wds_shards,
    write_zip_archives,
)
from dataloader.shards import DEFAULT_SHARD_SAMPLES  # noqa: E402

logger = logging.getLogger("make_digits")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent.parent / "data" / "digits"))
    parser.add_argument("--txt", default=None, help="also write the txt-list layout to this folder")
    parser.add_argument("--zip", default=None, help="also write the zip-archive layout to this folder")
    parser.add_argument("--csv", default=None, help="also write the csv-table layout (path,label) to this folder")
    parser.add_argument("--wds", default=None, help="also write WebDataset tar shards (+ _info.json) to this folder")
    parser.add_argument("--shard_samples", type=int, default=DEFAULT_SHARD_SAMPLES,
                        help="--wds: at most this many samples per shard")
    parser.add_argument("--hf", default=None,
                        help="also write the Hugging Face parquet layout (DIR/data/<split>-*.parquet) to this folder")
    parser.add_argument("--multi_label", default=None, metavar="DIR",
                        help="also write the multi-label digit mosaics (csv tables, label sets) to this folder")
    parser.add_argument("--per_class", type=int, default=None,
                        help="keep only the first N images of each class in each split (a tiny smoke-test set); "
                             "--multi_label: 10 x N mosaics per split")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    root = make_digits(args.out, per_class=args.per_class)
    if args.txt:
        logger.info("txt lists: %s", write_txt_lists(root, args.txt))
    if args.zip:
        logger.info("zip archives: %s", write_zip_archives(root, args.zip))
    if args.csv:
        logger.info("csv tables: %s", write_csv_tables(root, args.csv))
    if args.wds:
        logger.info("shards: %s", write_wds_shards(root, args.wds, jobs=2, max_samples=args.shard_samples))
    if args.hf:
        logger.info("parquet files: %s", convert_dataset(root, "folder", "parquet", args.hf, replace=True))
    if args.multi_label:
        sizes = {split: 10 * args.per_class for split in SPLITS} if args.per_class is not None else MOSAIC_SIZES
        try:
            logger.info("multi-label mosaics: %s", make_mosaic(args.multi_label, sizes))
        except ValueError as e:
            sys.exit(f"make_digits.py --multi_label: {e}")


if __name__ == "__main__":
    main()
