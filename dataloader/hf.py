"""Hugging Face datasets (``--dataset hf``), read through the ``datasets`` library.

``--data`` is one of:
  * a ``save_to_disk`` folder (``datasets.load_from_disk``): a DatasetDict with train / validation (or val) /
    test splits, or a single Dataset, which is the train split;
  * a folder of parquet files in the Hub's layout, ``DATA/data/{train,validation,test}-*.parquet`` (a
    ``DATA/{split}-*.parquet`` beside it works too), prepared once by the library's ``parquet`` builder into
    memory-mappable arrow files in its cache (``HF_DATASETS_CACHE``, default ``~/.cache/huggingface/datasets``),
    as ``load_dataset`` does;
  * a Hub dataset name (``user/name``) already in that cache. Nothing is downloaded: a name that is not
    cached is one error naming the cache and how to fill it.

The image column is ``image`` or ``img`` (``--image_col`` names another): a ``datasets.Image`` feature (its
encoded bytes, or the file its ``path`` names) or a binary column of encoded bytes. The label column is
``label`` or ``labels`` (``--label_col``): class names come from its ``ClassLabel`` feature, else integer
labels take the names of ``DATA/classes.txt`` or are ``0..K-1``. A column named by a flag is that column or
an error naming the columns there are, never swapped for a default one.

With ``--multi_label`` the label column holds a list per row (a ``Sequence``/``List`` feature): of ``ClassLabel``
indices (names from the feature), of plain integers (names as for an integer column: classes.txt or ``0..K-1``),
or of strings (names: the sorted union over train). A row's list is its label set; an empty list is an image
without labels, allowed only with ``--allow_empty_labels``. Without ``--multi_label`` a list column is an error
naming the flag.

A sample's key is ``<split>/<row>`` (``train/000123``): stable for a given dataset, and what side files
(teacher outputs, curricula) and split files name. The reader returns a row's encoded image bytes from the
split's arrow files, memory-mapped lazily once per process (DataLoader workers included), so every feature of
the map-style layouts works unchanged.
"""
from __future__ import annotations

import functools
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from .errors import DatasetError, Errors, read_classes_file, report
from .labels import Label, LabelSets, label_set

logger = logging.getLogger(__name__)

# Our split name -> the names a Hugging Face dataset may give it, in order of preference.
HF_SPLITS = {"train": ("train",), "val": ("validation", "val", "valid"), "test": ("test",)}
IMAGE_COLUMNS = ("image", "img")
LABEL_COLUMNS = ("label", "labels")
HUB_NAME = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")
SAVED_MARKERS = ("dataset_dict.json", "state.json")  # a save_to_disk folder: a DatasetDict, or one Dataset
LIST_FEATURES = ("Sequence", "List", "LargeList")  # the datasets library's list features (names across versions)


def _datasets():
    """The ``datasets`` library, imported on first use (a run on other layouts never imports it), its
    progress bars off (training draws its own) and its log quiet: what goes wrong is raised as one
    DatasetError that quotes the library's reason."""
    import datasets
    datasets.disable_progress_bars()
    datasets.utils.logging.set_verbosity(logging.CRITICAL)
    return datasets


def datasets_cache() -> str:
    """Where the ``datasets`` library keeps prepared datasets: ``HF_DATASETS_CACHE``, else ``$HF_HOME/datasets``,
    else ``~/.cache/huggingface/datasets`` (read now, so a test or a shell may set it late)."""
    if os.environ.get("HF_DATASETS_CACHE"):
        return os.path.expanduser(os.environ["HF_DATASETS_CACHE"])
    home = os.environ.get("HF_HOME") or os.path.join(os.path.expanduser("~"), ".cache", "huggingface")
    return os.path.join(os.path.expanduser(home), "datasets")


def is_hf_folder(root: Path) -> bool:
    """Whether ``root`` holds a ``save_to_disk`` dataset or Hub-layout parquet files."""
    return any((root / name).is_file() for name in SAVED_MARKERS) or bool(_parquet_files(root))


def _parquet_files(root: Path) -> dict[str, list[str]]:
    """``{split: [parquet files]}`` of the Hub layout (``data/<split>-*.parquet`` or ``<split>-*.parquet``)."""
    found: dict[str, list[str]] = {}
    for folder in (root / "data", root):
        for names in HF_SPLITS.values():
            for name in names:
                files = sorted(str(f) for f in folder.glob(f"{name}-*.parquet"))
                if files and name not in found:
                    found[name] = files
    return found


def _load_hub(name: str) -> dict[str, Any]:
    """A Hub dataset from the ``datasets`` cache, never downloaded."""
    datasets = _datasets()
    cache = datasets_cache()
    if not HUB_NAME.match(name):
        raise DatasetError(f"--data {name!r} is neither a folder nor a Hugging Face dataset name (user/name): a "
                           f"--dataset hf dataset is a save_to_disk folder, a folder of data/<split>-*.parquet "
                           f"files, or a Hub name in the datasets cache ({cache})")
    saved, datasets.config.HF_HUB_OFFLINE = datasets.config.HF_HUB_OFFLINE, True
    try:
        return dict(datasets.load_dataset(name, cache_dir=cache))
    except (ConnectionError, FileNotFoundError, ValueError):
        raise DatasetError(
            f"Hugging Face dataset {name!r} is not in the datasets cache {cache} and this project never downloads "
            f"data (nor is there a folder {name}): fill the cache on a machine with network, with the same "
            f"HF_DATASETS_CACHE or HF_HOME: python -c \"import datasets; datasets.load_dataset('{name}')\", and copy "
            f"it here; or save it with .save_to_disk(DIR) (or its parquet files) and pass --data DIR") from None
    finally:
        datasets.config.HF_HUB_OFFLINE = saved


def _load_folder(path: Path) -> dict[str, Any] | None:
    """The splits of a save_to_disk folder or of Hub-layout parquet files (None: neither); a file the library
    cannot read is one DatasetError naming the folder."""
    import pyarrow as pa
    datasets = _datasets()
    try:
        if any((path / name).is_file() for name in SAVED_MARKERS):
            loaded = datasets.load_from_disk(str(path))
            return dict(loaded) if isinstance(loaded, datasets.DatasetDict) else {"train": loaded}
        if parquet := _parquet_files(path):
            return dict(datasets.load_dataset("parquet", data_files=parquet, cache_dir=datasets_cache()))
    except (OSError, ValueError, pa.ArrowException, datasets.exceptions.DatasetGenerationError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise DatasetError(f"{path}: the datasets library cannot read it ({type(e).__name__}: {first}); check the "
                           f"files (python utils/check_images.py {path})") from None
    return None


@functools.lru_cache(maxsize=8)
def _open(root: str, stamp: tuple[int, ...]) -> dict[str, Any]:
    """``{our split: datasets.Dataset}`` of ``root`` (cached by the folder's modification times ``stamp``):
    train, val, test where present (at least one; training also needs train: :meth:`HfLayout.classes`); other
    splits are ignored."""
    path = Path(root)
    parts = _load_folder(path)
    if parts is None and path.is_dir():
        raise DatasetError(f"{root} holds no Hugging Face dataset: --dataset hf reads a save_to_disk folder "
                           f"(dataset_dict.json) or parquet files in the Hub layout (data/train-*.parquet, "
                           f"data/validation-*.parquet, data/test-*.parquet)")
    if parts is None:
        parts = _load_hub(root)
    splits = {ours: parts[next(name for name in names if name in parts)]
              for ours, names in HF_SPLITS.items() if any(name in parts for name in names)}
    if not splits:
        raise DatasetError(f"{root} has no train, validation or test split (its splits: {', '.join(parts) or 'none'})")
    return splits


def _splits(root: Path) -> dict[str, Any]:
    stamp = tuple(os.stat(p).st_mtime_ns for p in (root, root / "data") if p.exists())
    return _open(str(root), stamp)


def _where(root: Path, split: str) -> str:
    return f"{root} ({split} split)"


def _column(dataset: Any, wanted: str | None, defaults: Sequence[str], what: str, flag: str, where: str) -> str:
    """The column holding ``what``: ``wanted`` (named by ``flag``) and no other, else (None) the first of
    ``defaults`` present. A name given never falls back to a default: ``--label_col label`` on a dataset whose
    labels are in ``labels`` is an error, not a silent swap."""
    names = list(dataset.column_names)
    found = next((name for name in ([wanted] if wanted else defaults) if name in names), None)
    if found is not None:
        return found
    asked = f"no column {wanted!r}" if wanted else f"no {what} column ({' or '.join(repr(d) for d in defaults)})"
    raise DatasetError(f"{where}: {asked}; its columns are {', '.join(names)}: name the {what} column with {flag}")


@dataclass(frozen=True)
class _Columns:
    image: str
    label: str


class HfLayout:
    """A Hugging Face dataset (see the module docstring); ``columns``: ``--image_col`` (``image``), ``--label_col``
    (``label``)."""

    takes_columns = True   # get_layout hands it the --image_col/--label_col choice
    named_data = True      # --data may be a name (a Hub dataset), not only a folder

    def __init__(self, columns: Any = None):
        self.image = getattr(columns, "image", None)
        self.label = getattr(columns, "label", None)
        self.sets: LabelSets | None = getattr(columns, "sets", None)  # --multi_label: a list column per row

    def columns(self, root: Path, split: str) -> _Columns:
        dataset, where = _splits(root)[split], _where(root, split)
        return _Columns(self.image_column(root, split),
                        _column(dataset, self.label, LABEL_COLUMNS, "label", "--label_col", where))

    def image_column(self, root: Path, split: str) -> str:
        """The image column of ``split`` (found or ``--image_col``), checked to hold images; labels not read."""
        dataset, where = _splits(root)[split], _where(root, split)
        image = _column(dataset, self.image, IMAGE_COLUMNS, "image", "--image_col", where)
        feature = dataset.features[image]
        if type(feature).__name__ != "Image" and getattr(feature, "dtype", None) not in ("binary", "large_binary"):
            raise DatasetError(f"{where}: column {image!r} holds {feature}, not images (a datasets Image feature or "
                               f"encoded image bytes): name the image column with --image_col")
        return image

    @staticmethod
    def exists(root: Path, split: str) -> bool:
        return split in _splits(root)

    def classes(self, root: Path) -> list[str]:
        splits = _splits(root)
        if "train" not in splits:  # --predict reads any split; the class names come from train's labels
            raise DatasetError(f"{root} has no train split (its splits: {', '.join(splits)}): the class names "
                               f"and training come from it")
        feature = self._label_feature(root, "train")
        if type(feature).__name__ == "ClassLabel":
            return list(feature.names)
        names = read_classes_file(root) if root.is_dir() else None
        if names is not None:
            return names
        if self.sets is not None and _is_string(feature):  # lists of names: their sorted union
            return sorted({str(name) for labels in self._labels(root, "train") if labels for name in labels})
        if not str(getattr(feature, "dtype", "")).startswith(("int", "uint")):
            lists = " (with --multi_label: lists of either, or of names)" if self.sets is not None else ""
            raise DatasetError(f"{_where(root, 'train')}: the labels are {feature}, neither a ClassLabel nor integers"
                               f"{lists}: cast the column with dataset.class_encode_column(...), or write integer "
                               f"labels with a classes.txt")
        present = {i for labels in self._labels(root, "train") if labels is not None
                   for i in ([labels] if isinstance(labels, int) else labels)}
        if not present:
            raise DatasetError(f"{_where(root, 'train')}: no row has a label: the class names come from train's labels "
                               f"(add {root / 'classes.txt'}, one class name per line, in label order)")
        missing = min(set(range(max(present) + 1)) - present, default=None)
        if missing is not None:
            raise DatasetError(f"{_where(root, 'train')}: no row has label {missing} although label {max(present)} "
                               f"exists: integer labels without a ClassLabel must be 0..K-1 with none missing; "
                               f"add {root / 'classes.txt'} (one class name per line, in label order)")
        return [str(i) for i in range(max(present) + 1)]

    def _label_feature(self, root: Path, split: str) -> Any:
        """The label column's feature; with ``--multi_label`` the feature of its lists' items. A list column
        without ``--multi_label`` (or a plain one with it) is an error saying which flag fits."""
        feature = _splits(root)[split].features[self.columns(root, split).label]
        listed = type(feature).__name__ in LIST_FEATURES
        where, column = _where(root, split), self.columns(root, split).label
        if listed and self.sets is None:
            raise DatasetError(f"{where}: the label column {column!r} holds a list of labels per row ({feature}): "
                               f"that is a multi-label dataset: add --multi_label")
        if self.sets is not None and not listed:
            raise DatasetError(f"{where}: --multi_label reads a list of labels per row, but the label column "
                               f"{column!r} holds one label ({feature}): drop --multi_label, or name the column of "
                               f"label lists with --label_col")
        return feature.feature if listed else feature

    def _labels(self, root: Path, split: str) -> list[Any]:
        dataset = _splits(root)[split]
        return dataset.data.column(self.columns(root, split).label).to_pylist()

    def samples(self, root: Path, split: str, class_names: Sequence[str],
                errors: Errors = None) -> list[tuple[str, Label]]:
        if self.sets is not None:
            return self._set_samples(root, split, class_names, errors)
        labels = self._labels(root, split)
        samples = []
        for row, label in enumerate(labels):
            if not isinstance(label, int) or not 0 <= label < len(class_names):
                unlabelled = "; -1 is the datasets library's 'no label'" if label == -1 else ""
                report(errors, DatasetError(f"{describe_row(root, split, row)}: label {label} is out of range: "
                                            f"there are {len(class_names)} classes (labels 0..{len(class_names) - 1}"
                                            f"{unlabelled}); fix the row's label or drop the row"))
                continue
            samples.append((row_key(split, row, len(labels)), label))
        return samples

    def _set_samples(self, root: Path, split: str, class_names: Sequence[str],
                     errors: Errors) -> list[tuple[str, tuple[int, ...]]]:
        """``(key, label set)`` per row of a list label column (``--multi_label``); a row with no list, an empty
        one without ``--allow_empty_labels``, or a label that is no class is reported naming ``<split>/<row>``."""
        by_name = {name: i for i, name in enumerate(class_names)} if _is_string(self._label_feature(root, split)) \
            else None
        labels, samples = self._labels(root, split), []
        for row, values in enumerate(labels):
            key = row_key(split, row, len(labels))
            where = f"{describe_row(root, split, row)} ({key})"
            found = [by_name.get(v) if by_name is not None else v for v in values or []]
            bad = [v for v, i in zip(values or [], found) if not isinstance(i, int) or not 0 <= i < len(class_names)]
            if values is None or bad:
                kinds = "a name among train's labels" if by_name is not None else f"0..{len(class_names) - 1}"
                what = "no label list (null)" if values is None else \
                    f"label {bad[0]!r} is not a class ({len(class_names)} classes: {kinds})"
                report(errors, DatasetError(f"{where}: {what}; fix the row's labels or drop the row"))
            elif not found and not self.sets.allow_empty:
                report(errors, DatasetError(self.sets.empty_error(where)))
            else:
                samples.append((key, label_set(found)))
        return samples

    @staticmethod
    def rows(root: Path, split: str) -> list[str]:
        """The key of every row of ``split``, labelled or not (what ``--predict`` names its rows)."""
        count = _splits(root)[split].num_rows
        return [row_key(split, row, count) for row in range(count)]

    def reader(self, root: Path, split: str, max_pixels: int = 0) -> ArrowImageReader:
        dataset = _splits(root)[split]
        return ArrowImageReader(tuple(f["filename"] for f in dataset.cache_files), self.image_column(root, split))

    @staticmethod
    def describe(root: Path, split: str, source: str) -> str:
        return describe_row(root, split, int(source.rsplit("/", 1)[1]))


def _is_string(feature: Any) -> bool:
    return str(getattr(feature, "dtype", "")) in ("string", "large_string")


def row_key(split: str, row: int, count: int) -> str:
    """A row's key, ``<split>/<row>``, the row zero-padded to at least 6 digits (``train/000123``), so that keys
    sort as rows do."""
    return f"{split}/{row:0{max(6, len(str(count - 1)))}d}"


def unlabelled_rows(source: str | Path, columns: Any = None) -> tuple[list[str], RowsReader]:
    """Every row of every split (train, val, test) of the Hugging Face dataset ``source``, as keys
    ``<split>/<row>``, and a reader of their encoded images: what ``--predict`` classifies (labels are not
    read, so unlabelled splits, e.g. label -1, work). ``columns``: ``--image_col``, else found."""
    layout, root = HfLayout(columns), Path(source)
    splits = [split for split in HF_SPLITS if layout.exists(root, split)]
    keys = [key for split in splits for key in layout.rows(root, split)]
    return keys, RowsReader({split: layout.reader(root, split) for split in splits})


def describe_row(root: Path, split: str, row: int) -> str:
    """How a message names one row: ``DATA (train split) row 12``."""
    return f"{_where(root, split)} row {row}"


@functools.lru_cache(maxsize=16)
def _mapped_column(files: tuple[str, ...], column: str, pid: int) -> Any:
    """The ``column`` of a split's arrow files, memory-mapped (no copy) in process ``pid``."""
    import pyarrow as pa
    tables = [pa.ipc.open_stream(pa.memory_map(f)).read_all() for f in files]
    return pa.concat_tables(tables).column(column)


@dataclass(frozen=True)
class ArrowImageReader:
    """The encoded image of a row (key ``<split>/<row>``) of a split's arrow files; each process maps the
    files itself on its first read (so the reader pickles to DataLoader workers as two names)."""
    files: tuple[str, ...]
    column: str

    def __call__(self, key: str) -> bytes:
        value = _mapped_column(self.files, self.column, os.getpid())[int(key.rsplit("/", 1)[1])].as_py()
        if isinstance(value, dict):  # a datasets Image: its bytes, or the file it names
            if value.get("bytes") is not None:
                return value["bytes"]
            if value.get("path"):
                with open(value["path"], "rb") as f:
                    return f.read()
            raise OSError(f"row {key} holds no image (neither bytes nor a path)")
        if value is None:
            raise OSError(f"row {key} holds no image (null)")
        return value


@dataclass(frozen=True)
class RowsReader:
    """The encoded image of a row of any split (key ``<split>/<row>``), through that split's reader."""
    readers: dict[str, ArrowImageReader]

    def __call__(self, key: str) -> bytes:
        return self.readers[key.split("/", 1)[0]](key)
