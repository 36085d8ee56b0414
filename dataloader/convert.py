"""Converting any dataset this project reads (class folders, txt lists, zip archives, csv tables, Hugging Face
datasets) into another storage format: the logic behind ``utils/convert_data.py``.

Every format is one writer in :data:`WRITERS` with the signature ``write(out_dir, split, records, class_names,
jobs)`` (the streamed formats, :data:`SHUFFLED`, also take ``max_samples``, the samples per shard): ``records``
yields ``(key, encoded image bytes, label index)`` in the source's sample order (so the same seed trains the same
run on the converted data), ``key`` being the sample's stable key (its path relative to the dataset root). The
source's images are read in ``jobs`` worker processes, in order, behind one progress bar, and the writers write
``jobs`` files at a time (:mod:`dataloader.parts`); the output is written into a temporary folder beside ``out`` and
renamed at the end, so a killed conversion leaves no half dataset at ``out``.

Label sets (a source read with ``--multi_label``) are kept: a record's label is then a tuple of class indices,
written as a ``Sequence(ClassLabel)`` column in parquet and as ``.cls`` ``1,4`` in shards, which ``--dataset hf`` /
``--dataset wds`` with ``--multi_label`` read back as the same sets.
"""
from __future__ import annotations

import functools
import logging
import multiprocessing
import os
import random
import shutil
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

from utils.atomic import write_json_atomic, write_text_atomic

from .datasets import Columns, DatasetError, get_layout, sample_key
from .hf import HF_SPLITS
from .labels import is_multi
from .parts import Record, cut_parts, write_parts
from .shards import DEFAULT_SHARD_SAMPLES, write_wds_split

logger = logging.getLogger(__name__)

Writer = Callable[[Path, str, Iterable[Record], Sequence[str], int], None]
SPLITS = ("train", "val", "test")
PARQUET_ROWS_PER_GROUP = 100        # the datasets library's row group for image datasets: cheap row access
PARQUET_MAX_FILE_BYTES = 512 << 20  # the Hub's files are about 500 MB each
# Parquet files written at a time, whatever -j: each one in flight (and the one cut next) holds its up to 512 MB of
# images in memory, so memory stays near 1.5 GB where -j files at a time would grow with the core count
PARQUET_MAX_WRITERS = 2


def hf_features(class_names: Sequence[str], multi_label: bool = False):
    """The ``datasets`` features of a converted split: ``image`` (an Image) and ``label`` (a ClassLabel; label
    sets: a Sequence of them)."""
    from datasets import ClassLabel, Features, Image, Sequence
    label = ClassLabel(names=list(class_names))
    return Features({"image": Image(), "label": Sequence(label) if multi_label else label})


def write_parquet_split(out_dir: Path, split: str, records: Iterable[Record], class_names: Sequence[str],
                        jobs: int) -> None:
    """``out_dir/data/<split>-NNNNN-of-MMMMM.parquet`` in the Hub's layout (val is written as ``validation``):
    columns ``image`` (the encoded bytes, with the key as its path) and ``label`` (a ClassLabel of
    ``class_names``, or a Sequence of them when the records' labels are sets), their features in the schema so
    that the ``datasets`` library reads them back; files of at
    most about 512 MB, row groups of 100 rows, ``min(jobs, PARQUET_MAX_WRITERS)`` files written at a time
    (:mod:`dataloader.parts`: the same files, byte for byte, whatever ``jobs`` is)."""
    schemas = {multi: hf_features(class_names, multi).arrow_schema for multi in (False, True)}
    folder, name = out_dir / "data", HF_SPLITS[split][0]
    folder.mkdir(parents=True, exist_ok=True)

    def write(i: int, rows: Sequence[Record]) -> Path:
        multi = is_multi([label for _, _, label in rows])
        return _write_parquet(folder / f"{name}-part{i:05d}.parquet", rows, schemas[multi], multi)

    parts = write_parts(cut_parts(records, PARQUET_MAX_FILE_BYTES), write, min(jobs, PARQUET_MAX_WRITERS))
    for i, part in enumerate(parts):  # the final names need the count
        part.rename(folder / f"{name}-{i:05d}-of-{len(parts):05d}.parquet")


def _write_parquet(path: Path, rows: Sequence[Record], schema, multi_label: bool = False) -> Path:
    """One parquet file of ``rows`` (in the staging folder of :func:`convert_dataset`); ``multi_label``: the
    labels are sets, a list column."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    image = pa.StructArray.from_arrays([pa.array([data for _, data, _ in rows], pa.binary()),
                                        pa.array([key for key, _, _ in rows], pa.string())], names=["bytes", "path"])
    labels = [list(label) if multi_label else label for _, _, label in rows]
    kind = pa.list_(pa.int64()) if multi_label else pa.int64()
    table = pa.Table.from_arrays([image, pa.array(labels, kind)], schema=schema)
    pq.write_table(table, path, row_group_size=PARQUET_ROWS_PER_GROUP)
    return path


def write_shards_split(out_dir: Path, split: str, records: Iterable[Record], class_names: Sequence[str],
                       jobs: int, max_samples: int = DEFAULT_SHARD_SAMPLES) -> None:
    """WebDataset shards (:func:`dataloader.shards.write_wds_split`) of at most ``max_samples`` samples, with each
    key's dots made underscores (webdataset cuts a sample's suffix at the first dot of its name: ``3/12.png``
    becomes ``3/12_png``)."""
    write_wds_split(out_dir, split, ((key.replace(".", "_"), data, label) for key, data, label in records),
                    class_names, jobs, max_samples)


WRITERS: dict[str, Writer] = {
    "parquet": write_parquet_split,
    "wds": write_shards_split,
}
# Formats read shard by shard as streams: written in a seeded shuffled order, so that every shard holds every
# class (a source's order is usually class by class, and a shuffle buffer cannot mix what a shard lacks), in
# shards of ``max_samples`` samples.
SHUFFLED = {"wds"}
SHUFFLE_SEED = 0

_reader: Callable[[str], bytes] | None = None  # the source split's reader in a worker process


def _set_reader(reader: Callable[[str], bytes]) -> None:
    global _reader
    _reader = reader


def _read(source: str) -> bytes:
    return _reader(source)


def read_records(root: Path, kind: str, split: str, samples: Sequence[tuple[str, int]], jobs: int = 1,
                 columns: Columns | None = None, bar=None) -> Iterator[Record]:
    """``(key, encoded bytes, label)`` of each of ``samples`` (the layout's samples of ``split``), in order,
    read by ``jobs`` processes; ``bar`` (a tqdm) counts them."""
    layout = get_layout(kind, columns)
    reader = layout.reader(root, split, 0)
    keys = [sample_key(root, kind, split, source) for source, _ in samples]
    sources = [source for source, _ in samples]
    if jobs > 1:
        with multiprocessing.get_context("fork").Pool(jobs, initializer=_set_reader, initargs=(reader,)) as pool:
            for key, data, (_, label) in zip(keys, pool.imap(_read, sources, chunksize=16), samples):
                yield key, data, label
                if bar is not None:
                    bar.update()
        return
    for key, source, (_, label) in zip(keys, sources, samples):
        yield key, reader(source), label
        if bar is not None:
            bar.update()


def convert_dataset(src: str | Path, kind: str, to: str, out: str | Path, jobs: int = 1, progress: bool = False,
                    columns: Columns | None = None, replace: bool = False, shard_samples: int | None = None) -> Path:
    """Write the dataset ``src`` (layout ``kind``) as ``to`` (a :data:`WRITERS` name) into ``out``: every split
    it has, through a temporary folder renamed at the end. An existing ``out`` is an error unless ``replace``.
    ``shard_samples``: a streamed format's samples per shard (None: its default; refused for the others)."""
    if to not in WRITERS:
        raise DatasetError(f"unknown output format {to!r}; choose from {', '.join(WRITERS)}")
    if shard_samples is not None and to not in SHUFFLED:
        raise DatasetError(f"--shard_samples cuts {' and '.join(sorted(SHUFFLED))} output into shards; --to {to} "
                           f"has none: drop it")
    write = functools.partial(WRITERS[to], max_samples=shard_samples) if shard_samples is not None else WRITERS[to]
    src, out = Path(src), Path(out)
    if out.exists() and not replace:
        raise DatasetError(f"{out} already exists: choose another --out, or remove it first")
    layout = get_layout(kind, columns)
    if getattr(layout, "streams", False):
        raise DatasetError(f"{src}: --dataset {kind} is streamed, not read by index, so this converter cannot read "
                           f"it; read the shards with webdataset (or tarfile) and write the samples out yourself")
    class_names = layout.classes(src)
    splits = [split for split in SPLITS if layout.exists(src, split)]
    tmp = out.with_name(f".{out.name}.partial")
    if tmp.exists():
        logger.info("removing %s, left by an interrupted conversion", tmp)
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    from tqdm import tqdm
    try:
        for split in splits:
            samples = layout.samples(src, split, class_names)
            if to in SHUFFLED:
                samples = [samples[i] for i in random.Random(SHUFFLE_SEED).sample(range(len(samples)), len(samples))]
            with tqdm(total=len(samples), desc=f"{split} -> {to}", disable=not progress, dynamic_ncols=True) as bar:
                write(tmp, split, read_records(src, kind, split, samples, jobs, columns, bar), class_names, jobs)
        write_text_atomic(tmp / "classes.txt", "\n".join(class_names) + "\n")
        write_json_atomic(tmp / "converted_from.json", {"data": str(src.resolve()) if src.exists() else str(src),
                                                        "dataset": kind, "format": to,
                                                        "multi_label": getattr(columns, "sets", None) is not None},
                          indent=1)
        _swap_in(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _swap_in(tmp: Path, out: Path) -> None:
    """Rename the finished ``tmp`` to ``out``; a previous ``out`` (``replace``) is renamed away first and removed
    after, so ``out`` is always either the old dataset or the whole new one."""
    old = out.with_name(f".{out.name}.old-{os.getpid()}")
    if out.exists():
        out.rename(old)
    tmp.rename(out)
    if old.exists():
        shutil.rmtree(old)
