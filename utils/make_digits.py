"""Write scikit-learn's handwritten digits as a PNG class-folder dataset (the bundled default data).

1,797 real 8x8 images, upscaled to 32x32 RGB, split 70/15/15 stratified with a fixed seed into
``OUT/{train,val,test}/<0-9>/<index>.png``. Idempotent: an existing complete dataset is left alone.

    python utils/make_digits.py [--out data/digits] [--txt DIR] [--zip DIR] [--csv DIR] [--hf DIR]
        [--wds DIR [--shard_samples N]] [--per_class N]

``--hf DIR`` writes the Hugging Face Hub's parquet layout (``DIR/data/{train,validation,test}-*.parquet``, read
by ``--dataset hf``) through the converter of ``utils/convert_data.py``.
``--per_class N`` keeps the first N images of each class in each split: a tiny set for smoke runs
(``SMOKE=1`` in the z_task_shell recipes).
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dataloader.convert import convert_dataset  # noqa: E402
from dataloader.digits import make_digits  # noqa: E402
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
    parser.add_argument("--per_class", type=int, default=None,
                        help="keep only the first N images of each class in each split (a tiny smoke-test set)")
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


if __name__ == "__main__":
    main()
