"""Datasets from class folders, txt lists, zip archives, CSV/JSONL label tables and Hugging Face datasets, all giving
``(uint8 image, label, index)``.

Layouts (``--dataset``):
  folder  DATA/{train,val,test}/<class>/<image>
  txt     DATA/{train,val,test}.txt with lines ``path label`` (paths relative to the list's folder),
          optional DATA/classes.txt (one class name per line, in label order)
  zip     DATA/{split}.zip with DATA/{split}_map.txt lines ``member<TAB>label``; read without
          extracting, one open handle per worker process; optional DATA/classes.txt
  csv     DATA/{train,val,test}.csv (or .jsonl), or one DATA/labels.csv (or .jsonl) with a ``split`` column;
          a header names the columns (``path,label`` by default: ``--path_col``, ``--label_col``); labels are
          class names (integers too with DATA/classes.txt); paths relative to the table's folder
  wds     WebDataset tar shards (DATA/_info.json in timm's format, or <split>-NNNNNN.tar; DATA may be a URL):
          streamed by :class:`dataloader.shards.ShardDataset`, not by the map-style dataset below
  hf      a Hugging Face dataset: a save_to_disk folder, DATA/data/{train,validation,test}-*.parquet, or a Hub
          name in the datasets cache (:mod:`dataloader.hf`)

Class names always come from the train split (or classes.txt); a class in val or test that train
does not have is an error, as is any malformed line, which is reported with its file and line number.
Without classes.txt the train labels must be exactly 0..K-1 (a gap is an error naming the line).
One file under two labels of a split is an error naming both: a class folder that is a link to another
class (``ln -s 3 train/3dup``), files linked from one class into another, two list lines naming the same
file (or zip member) with different labels. Files are compared by real path (each folder resolved once,
a file only when it is a link), so the check costs one ``lstat`` per sample.

Every reader applies one pixel limit (``max_pixels``, ``--max_image_pixels``) from the image header before
decoding, and zip members are refused from the archive's directory when larger than such an image can be.
"""
from __future__ import annotations

import csv
import functools
import json
import logging
import os
import re
import zipfile
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath
from typing import Any, Callable, Iterator, Sequence

import torch
from torch.utils.data import Dataset

from utils.walk import visible_subfolders

from .errors import DatasetError, Errors
from .errors import read_classes_file as _read_classes_file
from .errors import report as _report
from .hf import HfLayout
from .io import (
    DEFAULT_MAX_IMAGE_PIXELS,
    IMG_EXTENSIONS,
    RGB8,
    ImageDecodeError,
    PixelFormat,
    check_size,
    decode_pixels,
    list_images,
)
from .keylog import keys_file
from .labels import Label, LabelSets, is_multi, label_set, multi_hot
from .splits import Holdout, carve, split_table
from .transforms import call_seeded  # noqa: F401 - imported from here by others

logger = logging.getLogger(__name__)

Sample = tuple[str, Label]  # (source, class index, or a label set with --multi_label: dataloader/labels.py)


def _parse_label_list(file: Path, sep: str | None, errors: Errors = None,
                      sets: LabelSets | None = None) -> list[tuple[int, str, Label]]:
    """``(line number, name, label)`` for each non-blank, non-comment line of a ``name<sep>label`` list; with
    label ``sets`` (``--multi_label``) the label field is a set of class indices, ``1,4`` (a line with no label
    field is an empty set, where ``--allow_empty_labels`` allows one)."""
    if not file.is_file():
        raise DatasetError(f"list file {file} does not exist")
    rows = []
    for lineno, line in enumerate(file.read_text().splitlines(), 1):
        text = line.strip() if sep is None else line.rstrip("\r\n")
        if not text.strip() or text.lstrip().startswith("#"):
            continue
        parts = text.rsplit(sep, 1)
        if sets is not None:
            row = _label_set_line(file, lineno, line, parts, sep, sets, errors)
            if row is not None:
                rows.append(row)
            continue
        if len(parts) != 2 or not parts[0].strip():
            want = "'path label'" if sep is None else "'member<TAB>label' (a tab, not spaces)"
            _report(errors, DatasetError(f"{file}:{lineno}: malformed line {line!r}: expected {want}"))
            continue
        name, label = parts[0].strip() if sep is None else parts[0], parts[1].strip()
        try:
            value = int(label)
        except ValueError:
            several = " (several labels are a multi-label dataset: add --multi_label)" if re.fullmatch(
                r"\d+(,\d+)+", label) else ""
            _report(errors, DatasetError(f"{file}:{lineno}: label {label!r} is not an integer{several}"))
            continue
        if value < 0:
            _report(errors, DatasetError(f"{file}:{lineno}: label {value} is negative"))
            continue
        rows.append((lineno, name, value))
    return rows


def _label_set_line(file: Path, lineno: int, line: str, parts: list[str], sep: str | None, sets: LabelSets,
                    errors: Errors) -> tuple[int, str, tuple[int, ...]] | None:
    """One ``name<sep>1,4`` line of a multi-label list as ``(line number, name, label set)``, or None (reported)."""
    if len(parts) == 1 or not parts[0].strip():  # no label field: an image without labels
        if not parts[0].strip():
            _report(errors, DatasetError(f"{file}:{lineno}: malformed line {line!r}: expected 'path 1,4'"))
            return None
        parts = [parts[0], ""]
    name = parts[0].strip() if sep is None else parts[0]
    if sep is None and re.search(r"\s[\d,]+$", name):  # "a.png 1, 4" or "a.png 0 1": labels cut at a space
        _report(errors, DatasetError(f"{file}:{lineno}: malformed line {line!r}: the labels of a line are one field "
                                     f"without spaces, 'path 1,4'"))
        return None
    names = sets.split(parts[1])
    if not names and not sets.allow_empty:
        _report(errors, DatasetError(sets.empty_error(f"{file}:{lineno}")))
        return None
    bad = [n for n in names if not (n.isascii() and n.isdigit())]
    if bad:
        _report(errors, DatasetError(f"{file}:{lineno}: label {bad[0]!r} is not a class index (a non-negative "
                                     f"integer; several as '1,4')"))
        return None
    return lineno, name, label_set(int(n) for n in names)


def _check_label_range(file: Path, rows: list[tuple[int, str, int]], num_classes: int,
                       errors: Errors = None) -> list[tuple[int, str, int]]:
    """The rows whose label is a class index (the others are reported)."""
    kept = []
    for row in rows:
        lineno, _, label = row
        top = label if isinstance(label, int) else max(label, default=-1)
        if top >= num_classes:
            _report(errors, DatasetError(f"{file}:{lineno}: label {top} is out of range: there are {num_classes} "
                                         f"classes (labels 0..{num_classes - 1})"))
            continue
        kept.append(row)
    return kept


def _classes_from_labels(root: Path, file: Path, sep: str | None, sets: LabelSets | None = None) -> list[str]:
    """Names from classes.txt, else ``0..K-1`` when the train labels are exactly 0..K-1: a gap (a typo such
    as 15 among labels 0..2) would silently add classes that have no image, so it is an error naming the line."""
    names = _read_classes_file(root)
    if names is not None:
        return names
    parsed = _parse_label_list(file, sep, sets=sets)
    if not parsed:
        raise DatasetError(f"{file}: no samples")
    present = {c for _, _, label in parsed for c in ([label] if isinstance(label, int) else label)}
    if not present:
        raise DatasetError(f"{file}: no sample has a label")
    rows = [(lineno, name, label if isinstance(label, int) else max(label, default=-1))  # a set: its top class
            for lineno, name, label in parsed]
    missing = min(set(range(max(present) + 1)) - present, default=None)
    if missing is not None:
        lineno, _, label = min((r for r in rows if r[2] > missing), key=lambda r: r[0])
        raise DatasetError(f"{file}:{lineno}: label {label} leaves label {missing} without an image: with no "
                           f"classes.txt the labels must be 0..K-1 with none missing; fix the label, or add "
                           f"{root / 'classes.txt'} (one class name per line, in label order)")
    return [str(i) for i in range(max(present) + 1)]


def _real_path(path: str, folders: dict[str, str]) -> str:
    """``os.path.realpath(path)``, cheaply: each folder is resolved once (cached in ``folders``), a file
    itself only when it is a symbolic link."""
    if os.path.islink(path):
        return os.path.realpath(path)
    folder, name = os.path.split(path)
    if folder not in folders:
        folders[folder] = os.path.realpath(folder)
    return os.path.join(folders[folder], name)


# One sample for the shared-file check: (what identifies the file, its label, how to name it in a message).
Keyed = tuple[str, int, str]


def _shared_labels(entries: list[Keyed]) -> dict[tuple[int, int], tuple[int, str, str]]:
    """Pairs of labels that hold the same file: ``{(label_a, label_b): (count, where_a, where_b)}``, with
    the first such file of each pair as the example (one entry per pair of classes, however many files)."""
    first: dict[str, tuple[int, str]] = {}
    pairs: dict[tuple[int, int], tuple[int, str, str]] = {}
    for key, label, where in entries:
        seen_label, seen_where = first.setdefault(key, (label, where))
        if seen_label != label:
            pair = (seen_label, label)
            count, where_a, where_b = pairs.get(pair, (0, seen_where, where))
            pairs[pair] = (count + 1, where_a, where_b)
    return pairs


TWO_LABELS = "the same images would train (and be scored) under two labels"


class FolderLayout:
    """``DATA/<split>/<class>/<image>``."""

    @staticmethod
    def exists(root: Path, split: str) -> bool:
        return (root / split).is_dir()

    @staticmethod
    def classes(root: Path) -> list[str]:
        train = root / "train"
        if not train.is_dir():
            raise DatasetError(f"{train} does not exist: a folder dataset needs DATA/train/<class>/<image>")
        names = [d.name for d in visible_subfolders(train)]
        if not names:
            raise DatasetError(f"{train} holds no class folders (expected DATA/train/<class>/<image>)")
        return names

    @staticmethod
    def samples(root: Path, split: str, class_names: Sequence[str], errors: Errors = None) -> list[Sample]:
        split_dir = root / split
        index = {name: i for i, name in enumerate(class_names)}
        samples: list[Sample] = []
        class_dirs: dict[int, Path] = {}
        for class_dir in visible_subfolders(split_dir):
            if class_dir.name not in index:
                _report(errors, DatasetError(f"class {class_dir.name!r} in {split_dir} is not a training class "
                                             f"(training classes: {', '.join(class_names[:20])}); "
                                             f"add it to DATA/train or remove it from {split}"))
                continue
            files = [str(f) for f in list_images(class_dir)]
            if not files:
                _report(errors, DatasetError(f"class folder {class_dir} holds no images "
                                             f"({', '.join(IMG_EXTENSIONS)}); add images or remove the folder"))
            samples += [(f, index[class_dir.name]) for f in files]
            class_dirs[index[class_dir.name]] = class_dir
        FolderLayout._check_shared(samples, class_names, class_dirs, errors)
        return samples

    @staticmethod
    def _check_shared(samples: list[Sample], class_names: Sequence[str], class_dirs: dict[int, Path],
                      errors: Errors) -> None:
        """Report each pair of classes holding the same files: the class folders themselves (one a link to
        the other), or files linked from one class into another."""
        folders: dict[str, str] = {}
        pairs = _shared_labels([(_real_path(f, folders), label, f) for f, label in samples])
        for (a, b), (count, where_a, where_b) in pairs.items():
            dir_a, dir_b = class_dirs[a], class_dirs[b]
            if os.path.realpath(dir_a) == os.path.realpath(dir_b):
                what = (f"class folders {dir_a} and {dir_b} are the same folder ({os.path.realpath(dir_b)}, "
                        f"through a symbolic link)")
                fix = "remove the link, or give the second class its own images"
            else:
                what = (f"classes {class_names[a]!r} and {class_names[b]!r} of {dir_a.parent} share {count} "
                        f"file(s) (e.g. {where_b} is {where_a}, through a symbolic link)")
                fix = "remove the linked files from the class they do not belong to"
            _report(errors, DatasetError(f"{what}: {TWO_LABELS}; {fix}"))

    @staticmethod
    def reader(root: Path, split: str, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> Callable[[str], bytes]:
        return _read_file


class TxtLayout:
    """``DATA/<split>.txt`` with ``path label`` lines (``path 1,4`` with ``--multi_label``)."""

    takes_columns = True  # get_layout hands it the label sets (--multi_label)

    def __init__(self, columns: Columns | None = None):
        self.sets = columns.sets if columns is not None else None

    @staticmethod
    def exists(root: Path, split: str) -> bool:
        return (root / f"{split}.txt").is_file()

    def classes(self, root: Path) -> list[str]:
        return _classes_from_labels(root, root / "train.txt", None, self.sets)

    def samples(self, root: Path, split: str, class_names: Sequence[str], errors: Errors = None) -> list[Sample]:
        file = root / f"{split}.txt"
        rows = _check_label_range(file, _parse_label_list(file, None, errors, self.sets), len(class_names), errors)
        samples, kept = [], []
        for lineno, name, label in rows:
            path = Path(name) if os.path.isabs(name) else file.parent / name
            if not path.is_file():
                _report(errors, DatasetError(f"{file}:{lineno}: image {str(path)!r} does not exist "
                                             f"(relative paths resolve against {file.parent})"))
                continue
            samples.append((str(path), label))
            kept.append(lineno)
        _report_shared_files(file, samples, kept, errors)
        return samples

    @staticmethod
    def reader(root: Path, split: str, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> Callable[[str], bytes]:
        return _read_file


class ZipLayout:
    """``DATA/<split>.zip`` with ``DATA/<split>_map.txt`` lines ``member<TAB>label`` (``member<TAB>1,4`` with
    ``--multi_label``)."""

    takes_columns = True  # get_layout hands it the label sets (--multi_label)

    def __init__(self, columns: Columns | None = None):
        self.sets = columns.sets if columns is not None else None

    @staticmethod
    def exists(root: Path, split: str) -> bool:
        return (root / f"{split}.zip").is_file()

    def classes(self, root: Path) -> list[str]:
        return _classes_from_labels(root, root / "train_map.txt", "\t", self.sets)

    def samples(self, root: Path, split: str, class_names: Sequence[str], errors: Errors = None) -> list[Sample]:
        archive, file = root / f"{split}.zip", root / f"{split}_map.txt"
        rows = _check_label_range(file, _parse_label_list(file, "\t", errors, self.sets), len(class_names), errors)
        try:
            with zipfile.ZipFile(archive) as zf:
                members = set(zf.namelist())
        except zipfile.BadZipFile as e:
            raise DatasetError(f"{archive} is not a valid zip archive: {e}") from None
        samples, kept = [], []
        for lineno, name, label in rows:
            pure = PurePosixPath(name)
            if pure.is_absolute() or ".." in pure.parts:
                _report(errors, DatasetError(f"{file}:{lineno}: unsafe member path {name!r} (absolute or with '..')"))
            elif name not in members:
                _report(errors, DatasetError(f"{file}:{lineno}: member {name!r} is not in {archive}"))
            else:
                samples.append((name, label))
                kept.append(lineno)
        _report_shared_lines(file, [(name, label, f"{lineno}:{name}")  # one member name: one member read
                                    for lineno, (name, label) in zip(kept, samples)], errors)
        return samples

    @staticmethod
    def reader(root: Path, split: str, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> Callable[[str], bytes]:
        return ZipReader(root / f"{split}.zip", max_pixels)


CSV_LABEL = "label"  # a csv table's label column when --label_col is not given


@dataclass(frozen=True)
class Columns:
    """The columns (JSONL: keys) of a csv dataset that hold each sample's image path and label
    (``--path_col``, ``--label_col``); a Hugging Face dataset's image column (``--image_col``) and label column.
    None: not given, so the default (csv: ``label``; hf: found among ``label``/``labels``); a name given is used
    as is, never swapped for another."""
    path: str = "path"
    label: str | None = None
    image: str | None = None
    sets: LabelSets | None = None  # --multi_label: how a label field holds several labels (None: one label)

    @property
    def csv_label(self) -> str:
        """A csv table's label column: the one given, else ``label``."""
        return self.label or CSV_LABEL

    @staticmethod
    def add_flags(parser: Any) -> None:
        """The command-line tools' flags for the columns and the label sets (``utils/check_images.py``,
        ``utils/convert_data.py``); :meth:`from_args` reads them back."""
        parser.add_argument("--path_col", default="path", help="csv tables: the column holding each image's path")
        parser.add_argument("--label_col", default=None, help="csv tables and hf: the column holding the labels "
                                                              "(default: csv label; hf label, else labels)")
        parser.add_argument("--image_col", default=None, help="hf: the column holding the images (default: image/img)")
        parser.add_argument("--multi_label", action="store_true",
                            help="each image has a set of labels (csv \"cat dog\", txt/zip 'path 1,4', hf lists, "
                                 "wds .cls '1,4'), as main.py --multi_label reads them")
        parser.add_argument("--label_delim", default=None, help="--multi_label: what separates the labels of one "
                                                                 "image in a label field (default: spaces and commas)")
        parser.add_argument("--allow_empty_labels", action="store_true",
                            help="--multi_label: an image with no label is allowed (default: an error naming it)")

    @staticmethod
    def from_args(args: Any) -> "Columns":
        return Columns(args.path_col, args.label_col, args.image_col, label_sets_from(args))


def label_sets_from(args: Any) -> LabelSets | None:
    """``--multi_label`` (with ``--label_delim``, ``--allow_empty_labels``) as a :class:`LabelSets`; None when the
    task is single-label."""
    if not getattr(args, "multi_label", False):
        return None
    return LabelSets(getattr(args, "label_delim", None), bool(getattr(args, "allow_empty_labels", False)))


@dataclass(frozen=True)
class Row:
    """One sample row of a label table: its line in the file, image path, label and split (or None)."""
    line: int
    path: str
    label: str | tuple[str, ...]  # a tuple: a JSONL list of labels (--multi_label)
    split: str | None


SPLIT_COLUMN = "split"
TABLE_SUFFIXES = (".csv", ".jsonl")
COLUMN_FLAGS = "name the columns with --path_col and --label_col"


def _csv_records(file: Path, columns: Columns) -> Iterator[tuple[int, dict[str, str] | str]]:
    """``(line, {column: value})`` per data row of a CSV file with a header, or ``(line, problem)``."""
    with open(file, newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None:
            raise DatasetError(f"{file}: empty: expected a header row naming the columns ({columns.path},"
                               f"{columns.label})")
        header = [name.strip() for name in header]
        for name in (columns.path, columns.label):
            if name not in header:
                raise DatasetError(f"{file}:1: no column {name!r} in the header (found: {', '.join(header)}); "
                                   f"{COLUMN_FLAGS}")
            if header.count(name) > 1:
                raise DatasetError(f"{file}:1: the header names column {name!r} twice; rename one")
        for fields in reader:
            if not fields:
                continue  # a blank line
            if len(fields) != len(header):
                yield reader.line_num, (f"malformed row: {len(fields)} fields where the header has {len(header)} "
                                        f"(quote a value that holds a comma: \"a,b.png\")")
                continue
            yield reader.line_num, dict(zip(header, fields))


def _jsonl_records(file: Path, columns: Columns) -> Iterator[tuple[int, dict[str, str] | str]]:
    """``(line, {key: value})`` per JSON object line of a JSONL file, or ``(line, problem)``."""
    with open(file, encoding="utf-8-sig") as f:
        for line, text in enumerate(f, 1):
            if not text.strip():
                continue
            try:
                record = json.loads(text)
            except json.JSONDecodeError as e:
                yield line, f"malformed row: not JSON ({e.msg})"
                continue
            if not isinstance(record, dict):
                yield line, "malformed row: not a JSON object"
                continue
            missing = [key for key in (columns.path, columns.label) if key not in record]
            if missing:
                yield line, f"no key {missing[0]!r} (found: {', '.join(record)}); {COLUMN_FLAGS}"
                continue
            values = {key: record[key] for key in (columns.path, columns.label, SPLIT_COLUMN) if key in record}
            if columns.sets is not None and isinstance(values[columns.label], list):  # a list of labels
                values[columns.label] = tuple(values[columns.label])
            bad = [key for key, value in values.items() if not _plain_value(value)]
            if bad:
                lists = " (or, with --multi_label, a list of them)" if bad[0] == columns.label else ""
                yield line, f"malformed row: {bad[0]!r} is {values[bad[0]]!r}, not a string (or integer){lists}"
                continue
            yield line, {key: tuple(str(v) for v in value) if isinstance(value, tuple) else str(value)
                         for key, value in values.items()}


def _plain_value(value: Any) -> bool:
    """A JSONL value this reader takes: a string or integer, or a tuple of them (a label list)."""
    if isinstance(value, tuple):
        return all(_plain_value(v) for v in value)
    return not isinstance(value, bool) and isinstance(value, (str, int))


@functools.lru_cache(maxsize=8)
def _cached_table(file: str, stamp: tuple[int, int], columns: Columns) -> tuple[tuple[Row, ...], tuple[str, ...]]:
    """The rows of a label table and its malformed rows' messages (``file:line: ...``), cached by the
    file's modification time and size: the classes, each split's check and its samples read one file."""
    path = Path(file)
    records = _jsonl_records(path, columns) if path.suffix == ".jsonl" else _csv_records(path, columns)
    rows, problems = [], []
    try:
        for line, record in records:
            if isinstance(record, str):
                problems.append(f"{file}:{line}: {record}")
                continue
            values = {key: value.strip() if isinstance(value, str) else value for key, value in record.items()}
            may_be_empty = {columns.label} if columns.sets is not None else set()  # checked with the labels
            empty = [key for key in (columns.path, columns.label) if not values[key] and key not in may_be_empty]
            if empty:
                problems.append(f"{file}:{line}: malformed row: empty {empty[0]!r}")
                continue
            rows.append(Row(line, values[columns.path], values[columns.label], values.get(SPLIT_COLUMN)))
    except UnicodeDecodeError as e:
        raise DatasetError(f"{file}: not UTF-8 text ({e.reason} at byte {e.start}); save it as UTF-8") from None
    return tuple(rows), tuple(problems)


def _read_table(file: Path, columns: Columns, errors: Errors = None) -> list[Row]:
    """The well-formed rows of a label table; each malformed one is reported (raised, or collected)."""
    stat = file.stat()
    rows, problems = _cached_table(str(file), (stat.st_mtime_ns, stat.st_size), columns)
    for problem in problems:
        _report(errors, DatasetError(problem))
    return list(rows)


class CsvLayout:
    """``DATA/{train,val,test}.csv`` (or ``.jsonl``), or one ``DATA/labels.csv`` (or ``.jsonl``) whose
    ``split`` column says train/val/test (without the column every row is train); a header names the
    columns (``path,label`` by default, :class:`Columns`). Labels are class names, or, with a
    ``DATA/classes.txt``, integers too (line i names class i); without classes.txt the classes are train's
    labels, sorted (as folder names are)."""

    takes_columns = True  # get_layout hands it the --path_col/--label_col choice

    def __init__(self, columns: Columns = Columns()):
        self.columns = replace(columns, label=columns.csv_label)  # None (not given): the default column

    @staticmethod
    def _tables(root: Path) -> tuple[dict[str, Path], Path | None]:
        """The per-split tables and the one labels table present; both kinds at once is an error."""
        def one(stem: str) -> Path | None:
            found = [root / f"{stem}{suffix}" for suffix in TABLE_SUFFIXES if (root / f"{stem}{suffix}").is_file()]
            if len(found) > 1:
                raise DatasetError(f"both {found[0]} and {found[1]} exist: keep one")
            return found[0] if found else None
        per_split = {split: file for split in ("train", "val", "test") if (file := one(split)) is not None}
        labels = one("labels")
        if labels is not None and per_split:
            raise DatasetError(f"both {labels} and {next(iter(per_split.values()))} exist: keep the one labels "
                               f"table (with a split column) or the per-split tables, not both")
        return per_split, labels

    def _split_rows(self, root: Path, split: str, errors: Errors = None) -> tuple[Path, list[Row]] | None:
        """The table holding ``split`` and that split's rows (None when the dataset has no such split)."""
        per_split, labels = self._tables(root)
        if labels is None:
            return (per_split[split], _read_table(per_split[split], self.columns, errors)) if split in per_split \
                else None
        rows = _read_table(labels, self.columns, errors)
        for row in rows:
            if row.split is not None and row.split not in ("train", "val", "test"):
                _report(errors, DatasetError(f"{labels}:{row.line}: split {row.split!r} is not train, val or test"))
        chosen = [row for row in rows if row.split == split or (row.split is None and split == "train")]
        return (labels, chosen) if chosen else None

    def exists(self, root: Path, split: str) -> bool:
        return self._split_rows(root, split, errors=[]) is not None

    def classes(self, root: Path) -> list[str]:
        names = _read_classes_file(root)
        if names is not None:
            return names
        errors: list[DatasetError] = []  # bad rows are reported by samples(), with the rest of the split
        found = self._split_rows(root, "train", errors)
        if found is None or not found[1]:
            raise errors[0] if errors else DatasetError(
                f"{found[0]}: no samples" if found else f"no train split in {root}: a csv dataset needs "
                f"DATA/train.csv (or .jsonl), or DATA/labels.csv (or .jsonl) with a split column")
        sets = self.columns.sets
        if sets is not None:
            return sorted({name for row in found[1] for name in sets.split(row.label)})
        names = sorted({row.label for row in found[1]})
        _warn_of_label_sets(found[0], found[1], set(names))
        return names

    def samples(self, root: Path, split: str, class_names: Sequence[str], errors: Errors = None) -> list[Sample]:
        found = self._split_rows(root, split, errors)
        if found is None:
            raise DatasetError(f"split {split!r} not found in {root} for --dataset csv")
        file, rows = found
        labels = _LabelIndex(root, class_names)
        samples, kept = [], []
        for row in rows:
            label = labels.index(row.label) if self.columns.sets is None else \
                _label_set(f"{file}:{row.line}", self.columns.sets.split(row.label), labels.index, labels.unknown,
                           self.columns.sets, errors)
            path = Path(row.path) if os.path.isabs(row.path) else file.parent / row.path
            if label is _BAD:
                continue
            if label is None:
                _report(errors, DatasetError(f"{file}:{row.line}: label {row.label!r} is {labels.unknown}"))
            elif not path.is_file():
                _report(errors, DatasetError(f"{file}:{row.line}: image {str(path)!r} does not exist "
                                             f"(relative paths resolve against {file.parent})"))
            else:
                samples.append((str(path), label))
                kept.append(row.line)
        _report_shared_files(file, samples, kept, errors)
        return samples

    @staticmethod
    def reader(root: Path, split: str, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> Callable[[str], bytes]:
        return _read_file


class _LabelIndex:
    """A csv dataset's label -> class index: a class name, or with classes.txt also an integer (line i:
    class i); ``unknown`` says what a label that is neither is not."""

    def __init__(self, root: Path, class_names: Sequence[str]):
        self.names = {name: i for i, name in enumerate(class_names)}
        self.count = len(class_names)
        shown = ", ".join(list(class_names)[:20]) + (", ..." if self.count > 20 else "")
        classes_file = root / "classes.txt"
        self.integers = classes_file.is_file()
        self.unknown = (f"not in {classes_file} (a class name, or an integer 0..{self.count - 1}); fix the label "
                        f"or add the class there" if self.integers else
                        f"not a training class (training classes: {shown}); fix the label, or add the class's "
                        f"images to train")

    def index(self, label: str) -> int | None:
        if label in self.names:
            return self.names[label]
        if self.integers and label.isascii() and label.isdigit() and int(label) < self.count:
            return int(label)
        return None


def _warn_of_label_sets(file: Path, rows: Sequence[Row], names: set[str]) -> None:
    """A single-label table whose labels look like label sets (``"1 4"``, each part a label of other rows, in two
    or more labels) trains each set as a class of its own: a warning naming ``--multi_label`` (not an error: class
    names such as ``sea``, ``lion`` and ``sea lion`` are that too)."""
    sets = LabelSets()
    composite = [row for row in rows if isinstance(row.label, str) and len(parts := sets.split(row.label)) > 1
                 and all(part in names for part in parts)]
    if len({row.label for row in composite}) >= 2:
        row = composite[0]
        logger.warning("%s:%d: label %r is a set of labels that other rows have on their own (%d rows are such "
                       "sets): each set is trained as a class of its own; add --multi_label to train on label sets",
                       file, row.line, row.label, len(composite))


_BAD = object()  # a label set already reported as bad


def _label_set(where: str, names: Sequence[str], index: Callable[[str], int | None], unknown: str,
               sets: LabelSets, errors: Errors) -> tuple[int, ...] | object:
    """The label set of one sample from its label ``names`` (``index``: name -> class index or None); an
    unknown name, or no label without ``--allow_empty_labels``, is reported and gives ``_BAD``."""
    if not names and not sets.allow_empty:
        _report(errors, DatasetError(sets.empty_error(where)))
        return _BAD
    found = [index(name) for name in names]
    bad = [name for name, i in zip(names, found) if i is None]
    if bad:
        _report(errors, DatasetError(f"{where}: label {bad[0]!r} is {unknown}"))
        return _BAD
    return label_set(found)


def _report_shared_lines(file: Path, entries: list[Keyed], errors: Errors) -> None:
    """Report each pair of labels of a list ``file`` that name the same file (entries' ``where``:
    ``"<line>:<path>"``)."""
    for (a, b), (count, where_a, where_b) in _shared_labels(entries).items():
        (line_a, path_a), (line_b, path_b) = where_a.split(":", 1), where_b.split(":", 1)
        more = f" (and {count - 1} more such line(s) with labels {a} and {b})" if count > 1 else ""
        same = "also" if path_a == path_b else f"the same file as {path_a!r}"
        _report(errors, DatasetError(f"{file}:{line_b}: {path_b!r} (label {b}) is {same} on line {line_a} "
                                     f"(label {a}){more}: {TWO_LABELS}; keep one of the lines"))



def _report_shared_files(file: Path, samples: list[Sample], lines: list[int], errors: Errors) -> None:
    """:func:`_report_shared_lines` for a list of image files (txt lists, csv tables): ``samples[i]`` is on
    line ``lines[i]``; two spellings of one file (a link, ``a/../b``) count as the same file."""
    folders: dict[str, str] = {}
    _report_shared_lines(file, [(_real_path(path, folders), label, f"{line}:{path}")
                                for line, (path, label) in zip(lines, samples)], errors)

class ShardLayout:
    """WebDataset tar shards (:mod:`dataloader.shards`): streamed by :class:`dataloader.shards.ShardDataset`,
    so ``--data`` may be a URL (``streams``) and there is no list of samples to index."""

    streams = True

    @staticmethod
    def exists(root: str, split: str) -> bool:
        from .shards import ShardSet
        return ShardSet(root).exists(split)

    @staticmethod
    def classes(root: str) -> list[str]:
        from .shards import ShardSet
        return ShardSet(root).classes()

    @staticmethod
    def samples(root: str, split: str, class_names: Sequence[str], errors: Errors = None) -> list[Sample]:
        raise DatasetError("--dataset wds streams its shards: there is no list of samples to carve splits from or "
                           "to cache; drop --val_fraction/--test_fraction (write the splits as shards)")


LAYOUTS = {"folder": FolderLayout, "txt": TxtLayout(), "zip": ZipLayout(), "csv": CsvLayout(), "wds": ShardLayout,
           "hf": HfLayout()}


def _read_file(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


class ZipReader:
    """Reads members of one archive, with one open handle per process (re-opened after a fork).

    A member whose uncompressed size (from the archive's directory, before reading) is over what an image
    of ``max_pixels`` needs (:func:`dataloader.io.max_encoded_bytes`) is refused with ImageTooLarge: a 1 MB
    member can inflate to gigabytes. zipfile never returns more than that directory size, so the check holds
    even for a member that lies about it.
    """

    def __init__(self, path: Path, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS):
        self.path, self.max_pixels = path, max_pixels
        self._zip: zipfile.ZipFile | None = None
        self._pid: int | None = None

    def __call__(self, member: str) -> bytes:
        if self._zip is None or self._pid != os.getpid():
            self._zip = zipfile.ZipFile(self.path)
            self._pid = os.getpid()
        check_size(self._zip.getinfo(member).file_size, f"{self.path}:{member}", self.max_pixels)
        return self._zip.read(member)

    def __getstate__(self) -> dict:
        return {"path": self.path, "max_pixels": self.max_pixels, "_zip": None, "_pid": None}


def get_layout(kind: str, columns: Columns | None = None):
    """The layout for a ``--dataset`` kind; ``columns`` (``--path_col``/``--label_col``/``--image_col``) pick a
    csv or Hugging Face dataset's columns (the other layouts have none)."""
    if kind not in LAYOUTS:
        raise ValueError(f"unknown dataset kind {kind!r}; choose from {', '.join(LAYOUTS)}")
    layout = LAYOUTS[kind]
    return type(layout)(columns) if columns is not None and getattr(layout, "takes_columns", False) else layout


def read_class_names(root: str | Path, kind: str, columns: Columns | None = None) -> list[str]:
    """Class names of a dataset, from its train split (or classes.txt)."""
    layout = get_layout(kind, columns)
    if getattr(layout, "streams", False):
        return layout.classes(str(root))
    root = Path(root)
    if not root.is_dir() and not getattr(LAYOUTS.get(kind), "named_data", False):
        raise DatasetError(f"dataset root {str(root)!r} does not exist or is not a folder (--data)")
    return layout.classes(root)


def split_exists(root: str | Path, kind: str, split: str, holdout: Holdout | None = None,
                 columns: Columns | None = None) -> bool:
    """Whether ``split`` is on disk, or carved out of train by ``holdout``."""
    layout = get_layout(kind, columns)
    where = str(root) if getattr(layout, "streams", False) else Path(root)
    return (holdout is not None and split in holdout.carved()) or layout.exists(where, split)


def resolve_split(root: str | Path, kind: str, split: str, holdout: Holdout | None = None,
                  columns: Columns | None = None) -> str:
    """``split`` if present (on disk or carved by ``holdout``); a missing test split falls back to val, with a
    log line saying so."""
    if split_exists(root, kind, split, holdout, columns):
        return split
    if split == "test" and split_exists(root, kind, "val", holdout, columns):
        logger.info("no test split in %s: evaluating on the val split instead", root)
        return "val"
    raise DatasetError(f"split {split!r} not found in {root} for --dataset {kind}")


def sample_key(root: Path, kind: str, split: str, source: str) -> str:
    """A stable name of a sample of ``split`` for side files and split files: its path relative to the
    dataset root (``<split>.zip/<member>`` for zip archives, ``<split>/<row>`` for Hugging Face datasets)."""
    if kind == "zip":
        return f"{split}.zip/{source}"
    if kind == "hf":  # already a key: <split>/<row>
        return source
    path = Path(source).resolve()
    try:
        return path.relative_to(root.resolve()).as_posix()
    except ValueError:
        return path.as_posix()


def holdout_samples(root: Path, kind: str, class_names: Sequence[str], holdout: Holdout,
                    columns: Columns | None = None) -> tuple[list[Sample], dict[str, list[int]], dict[str, Any]]:
    """Train's samples, the indices of each split carved from them, and the split table (``split.json``).

    A split that is both on disk and asked to be carved is refused: which one would count is not for this
    code to guess."""
    layout = get_layout(kind, columns)
    for name in holdout.carved():
        if layout.exists(root, name):
            raise DatasetError(f"{root} already has a {name} split, and --{name}_fraction asks to carve one out "
                               f"of train: drop --{name}_fraction to use the {name} split on disk, or remove it")
    if not layout.exists(root, "train"):
        raise DatasetError(f"split 'train' not found in {root} for --dataset {kind}")
    samples = layout.samples(root, "train", class_names)
    keys = [sample_key(root, kind, "train", source) for source, _ in samples]
    labels = [label for _, label in samples]
    return samples, carve(keys, labels, holdout), split_table(keys, labels, holdout, str(root.resolve()))


class ClassificationDataset(Dataset):
    """A list of ``(source, label)`` samples read by a layout's reader and decoded to ``pixels`` (uint8 RGB
    unless told: ``--in_chans``, ``--bit_depth``).

    The key is an index, or ``(index, seed)`` from :class:`dataloader.loader.SeededSampler`: the seed
    makes the random transform of that sample a pure function of (run seed, epoch, index), so a
    resumed run sees exactly the augmentations it would have seen, whatever the worker count.

    With a ``holdout``, ``train`` and the splits it carves are parts of the train split on disk
    (:mod:`dataloader.splits`); ``source_split`` is where the samples are read from, and ``split_table``
    the whole split (what a run saves as ``split.json``; None without a holdout).
    """

    def __init__(self, root: str | Path, kind: str, split: str, class_names: Sequence[str] | None = None,
                 transform: Callable[[torch.Tensor], torch.Tensor] | None = None, skip_bad: bool = False,
                 max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS, holdout: Holdout | None = None,
                 columns: Columns | None = None, pixels: PixelFormat = RGB8):
        self.root, self.kind, self.split, self.skip_bad = Path(root), kind, split, skip_bad
        self.max_pixels, self.pixels = max_pixels, pixels
        self.class_names = list(class_names) if class_names is not None else read_class_names(root, kind, columns)
        layout = get_layout(kind, columns)
        self.source_split, self.split_table = split, None
        if holdout is not None and split in ("train", *holdout.carved()):
            samples, parts, self.split_table = holdout_samples(self.root, kind, self.class_names, holdout, columns)
            self.source_split, self.samples = "train", [samples[i] for i in parts[split]]
        elif not layout.exists(self.root, split):
            raise DatasetError(f"split {split!r} not found in {self.root} for --dataset {kind}")
        else:
            self.samples = layout.samples(self.root, split, self.class_names)
        if not self.samples:
            raise DatasetError(f"split {split!r} of {self.root} holds no images")
        self.targets = [label for _, label in self.samples]
        self.multi_label = is_multi(self.targets)  # label sets: batches carry multi-hot targets
        self.reader = layout.reader(self.root, self.source_split, max_pixels)
        self._describe_source = getattr(layout, "describe", None)
        self.transform = transform
        self._skips_logged: set[str] = set()  # one warning per bad file (per process), not one per read

    def __len__(self) -> int:
        return len(self.samples)

    def read(self, index: int) -> bytes:
        """The encoded bytes of sample ``index``; a file that cannot be read (a dangling link, no permission)
        is an ImageDecodeError like an undecodable one, so ``skip_bad`` skips it too."""
        source = self.samples[index][0]
        try:
            return self.reader(source)
        except OSError as e:
            raise ImageDecodeError(f"{self._describe(source)}: cannot read ({e.strerror or e})") from None

    def load(self, index: int) -> torch.Tensor:
        """The decoded, untransformed image of sample ``index`` (refused over ``max_pixels``, from its header)."""
        return decode_pixels(self.read(index), name=self._describe(self.samples[index][0]), max_pixels=self.max_pixels,
                             fmt=self.pixels)

    def key(self, index: int) -> str:
        """A stable name of sample ``index`` for side files (teacher outputs, curricula): its path
        relative to the dataset root (``<split>.zip/<member>`` for zip archives)."""
        return sample_key(self.root, self.kind, self.source_split, self.samples[index][0])

    def skip_or_raise(self, error: Exception | str) -> None:
        """An image did not decode: raise, saying how to fix or skip it, or with ``skip_bad`` log the skip
        (once per file: the preview, every epoch and the cache read the same file again; counts say the rest)."""
        if not self.skip_bad:
            kind = type(error) if isinstance(error, ImageDecodeError) else ImageDecodeError  # e.g. ImageTooLarge
            raise kind(f"{error}; fix or remove the file (python utils/check_images.py {self.root} "
                                   f"lists every bad one), or pass --skip_bad_images") from None
        message = re.sub(r" at 0x[0-9a-fA-F]+", "", str(error))  # Pillow names a fresh BytesIO object each time
        if message not in self._skips_logged:
            self._skips_logged.add(message)
            logger.warning("skipping %s", message)

    def _describe(self, source: str) -> str:
        if self._describe_source is not None:
            return self._describe_source(self.root, self.source_split, source)
        return f"{self.root / (self.source_split + '.zip')}:{source}" if self.kind == "zip" else source

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, int, int] | None:
        """``(uint8 image, label, index)``; None for an undecodable image when ``skip_bad`` is set."""
        index, seed = key if isinstance(key, tuple) else (key, None)
        if (keys := keys_file()) is not None:  # tests: which rank and worker read which sample
            with keys:
                keys.write(f"{self.split} {self.key(index)}\n")
        try:
            image = self.load(index)
        except ImageDecodeError as e:
            self.skip_or_raise(e)
            return None
        if self.transform is not None:
            image = self.transform(image) if seed is None else call_seeded(self.transform, image, seed)
        label = self.samples[index][1]
        return image, multi_hot(label, len(self.class_names)) if self.multi_label else label, index
