"""WebDataset tar shards (``--dataset wds``): samples ``KEY.{jpg,jpeg,png,webp}`` + ``KEY.cls`` streamed from
tar files with the ``webdataset`` library, locally or from a URL.

Where the shards are (``--data``):
  * a folder or URL base with an ``_info.json`` in timm's format: ``splits.<name>.filenames``,
    ``splits.<name>.shard_lengths``, ``splits.<name>.num_samples``; optional ``classes`` (class names in
    label order) or ``num_classes``;
  * a local (or fsspec-listable) folder without one: the files ``<split>-*.tar``, counted once by reading them;
  * a brace pattern naming every shard, e.g. ``BASE/{train-{000000..000009},validation-000000}.tar``: the
    split of a shard is its file name up to the last ``-``.
  The val split is ``validation`` (timm's name) or ``val``. Class names: ``_info.json``'s ``classes``, else
  ``classes.txt`` beside the shards, else ``0..K-1`` (K from ``num_classes``, else the largest train label + 1).

Multi-label shards (``--multi_label``): a sample's ``.cls`` holds its label set, ``1,4`` (class indices separated by
commas or spaces, whatever ``--label_delim`` says for tables), or, without a ``.cls``, its ``.json`` holds
``{"labels": [1, 4]}``; an empty set is an image without labels (only with ``--allow_empty_labels``). Batches then
carry multi-hot ``N x K`` float targets: a worker hands them over as one more tensor beside the images and the
int64 meta (so the single-label path hands over exactly what it did).

How an epoch is read: the split's shards are put in an order shuffled per (seed, epoch) (training) or kept
(evaluation), and their samples, end to end, are cut into one contiguous range per rank; a rank's range is
cut at shard boundaries into pieces, dealt to its DataLoader workers in turn. Training ranks take
``num_samples // world_size`` samples each (the remainder, fewer than ``world_size`` samples, is left out of
that epoch, a different one each epoch); evaluation ranks split all samples, so each is counted once. Every
worker shuffles its stream with a buffer (``SHUFFLE_BUFFER`` samples); each sample's augmentation is seeded
from (seed, epoch, key). Workers hand over chunks, the main process cuts them into batches of exactly
``batch_size``, so the epoch length (and the LR schedule and progress bar) is known up front.

The index a sample streams with is its place in the split's shards in file order (whatever the epoch, rank
or worker), so ``key(index)`` (``<shard file>/<key>``) keys knowledge files and curricula. ``--cache_dataset
memory`` reads the split whole once (:meth:`ShardDataset.decoded_batches`) into
:class:`dataloader.cache.DecodedCache`, which then serves the epochs by index like the other layouts'.

A run resumed in the middle of an epoch (``--save_every_steps``, a stop) skips, in each worker, the whole
pieces that worker had read before the stop and reads the rest again: within one shard (plus the shuffle
buffer) per worker of the place it stopped; the log says how many samples that re-reads.
"""
from __future__ import annotations

import bisect
import functools
import hashlib
import io
import json
import logging
import random
import re
import tarfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Callable, Iterable, Iterator, Sequence

import torch
from torch.utils.data import DataLoader, IterableDataset, default_collate, get_worker_info

from utils.atomic import atomic_write, write_json_atomic

from .io import (
    DEFAULT_MAX_IMAGE_PIXELS,
    RGB8,
    DatasetError,
    ImageDecodeError,
    PixelFormat,
    _unwrap_worker_message,
    decode_pixels,
)
from .keylog import keys_file
from .labels import Label, LabelSets, label_set, multi_hot
from .parts import Record, cut_parts, write_parts
from .tar_stream import is_plain_tar, tar_files
from .transforms import call_seeded
from .workers import loader_generator

logger = logging.getLogger(__name__)

INFO_FILE = "_info.json"
IMAGE_SUFFIXES = ("jpg", "jpeg", "png", "webp")
SPLIT_NAMES = {"train": ("train",), "val": ("validation", "val"), "test": ("test",)}
SHUFFLE_BUFFER = 1000
_META = re.compile(r"__[^/]*__($|/)")  # webdataset's metadata files (skipped, as its tar iterator does)


class ShardError(DatasetError):
    """Shards or their ``_info.json`` are malformed; the message names the file and how to fix it. Raised in a
    DataLoader worker, it keeps its one line in the main process (as :class:`dataloader.io.ImageDecodeError`)."""

    def __init__(self, message: str = ""):
        super().__init__(_unwrap_worker_message(message, type(self).__name__))


def is_url(root: str) -> bool:
    return "://" in root


def join(base: str, name: str) -> str:
    """``name`` inside a folder or under a URL base."""
    return f"{base.rstrip('/')}/{name}" if is_url(base) else str(Path(base) / name)


def open_stream(url: str) -> IO[bytes]:
    """A binary stream of a local path, an ``http(s)://`` URL (urllib, no extra package) or any fsspec URL
    (``s3://``, ``gs://``, ``file://``...; the protocol's fsspec package must be installed)."""
    if not is_url(url):
        return open(url, "rb")
    if url.startswith(("http://", "https://")):
        return urllib.request.urlopen(url, timeout=60)  # noqa: S310 - the user's own --data URL
    import fsspec
    return fsspec.open(url, "rb").open()


def _read_text(url: str) -> str | None:
    """The text at a path or URL, None when it does not exist."""
    try:
        with open_stream(url) as f:
            return f.read().decode("utf-8")
    except FileNotFoundError:
        return None
    except urllib.error.HTTPError as e:
        if e.code == 404:
            return None
        raise ShardError(f"{url}: HTTP {e.code} {e.reason}") from None
    except urllib.error.URLError as e:
        raise ShardError(f"{url}: cannot be reached ({e.reason})") from None


def side_folder(data: str, kind: str) -> Path:
    """The local folder that holds the side files of ``--data`` (``--knowledge``'s teacher outputs and
    ``label.txt``, ``--make_curriculum``'s ``curriculum.txt``): ``--data`` itself, for shards named by a brace
    pattern the pattern's folder; shards at a URL and a Hugging Face Hub name (``--dataset hf`` read from the
    library's cache) have none (a DatasetError naming the flags that name the files)."""
    base = _base_and_pattern(data)[0] if kind == "wds" else data
    if (kind == "wds" and is_url(base)) or (kind == "hf" and not Path(data).is_dir()):
        error, where = (ShardError, "shards at a URL do") if kind == "wds" else (DatasetError, "a Hub name does")
        raise error(f"{data}: side files (distill_<arch>.txt and label.txt of --knowledge, curriculum.txt of "
                    f"--make_curriculum) are kept in the data's folder, which {where} not have: "
                    f"name them with --distill_files / --curriculum_file, or run --knowledge on a local copy")
    return Path(base)


@dataclass(frozen=True)
class Shard:
    """One tar file of a split: where it is, how many samples it holds, and the split index of its first."""
    url: str
    count: int
    offset: int


def _with_offsets(urls: Sequence[str], counts: Sequence[int]) -> list[Shard]:
    offsets = [0]
    for count in counts:
        offsets.append(offsets[-1] + count)
    return [Shard(url, count, offset) for url, count, offset in zip(urls, counts, offsets)]


def _base_and_pattern(root: str) -> tuple[str, str | None]:
    """``(base, brace pattern or None)`` of ``--data``."""
    if "{" not in root:
        return root.rstrip("/") if is_url(root) else root, None
    slash = root.rfind("/", 0, root.index("{"))
    return root[:slash] if slash >= 0 else ".", root


class ShardSet:
    """The shards of a ``--dataset wds`` source (:mod:`dataloader.shards`): splits, class names, counts."""

    def __init__(self, root: str | Path):
        self.root = str(root)
        self.base, self.pattern = _base_and_pattern(self.root)
        self.info_file = join(self.base, INFO_FILE)
        text = _read_text(self.info_file)
        try:
            self.info = json.loads(text) if text is not None else None
        except json.JSONDecodeError as e:
            raise ShardError(f"{self.info_file}: not valid JSON ({e})") from None
        self._files = self._split_files()

    def _split_files(self) -> dict[str, list[str]]:
        """``{split name as on disk: [shard urls]}``."""
        if self.info is not None and self.pattern is None:
            splits = self.info.get("splits")
            if not isinstance(splits, dict):
                raise ShardError(f"{self.info_file}: no 'splits' object (timm's format: splits.<name>.filenames)")
            return {name: [join(self.base, f) for f in entry.get("filenames", [])] if isinstance(entry, dict) else []
                    for name, entry in splits.items()}
        if self.pattern is not None:
            from braceexpand import braceexpand
            urls = list(braceexpand(self.pattern))
        elif not is_url(self.base) and Path(self.base).is_dir():
            urls = sorted(str(p) for p in Path(self.base).glob("*-*.tar"))
        elif is_url(self.base) and not self.base.startswith(("http://", "https://")):
            import fsspec
            fs, path = fsspec.core.url_to_fs(self.base)
            urls = sorted(fs.unstrip_protocol(p) for p in fs.glob(f"{path}/*-*.tar"))
        else:
            raise ShardError(f"{self.root}: no {INFO_FILE} and no shards found: --dataset wds needs {INFO_FILE} "
                             f"(timm's format), <split>-NNNNNN.tar files, or a brace pattern naming the shards")
        files: dict[str, list[str]] = {}
        for url in urls:
            files.setdefault(url.rsplit("/", 1)[-1].rsplit("-", 1)[0], []).append(url)
        return files

    def split_name(self, split: str) -> str | None:
        """The on-disk name of ``split`` (``val``: ``validation`` or ``val``), None when there is none."""
        return next((name for name in SPLIT_NAMES.get(split, (split,)) if self._files.get(name)), None)

    def exists(self, split: str) -> bool:
        return self.split_name(split) is not None

    def _urls(self, split: str) -> tuple[str, list[str]]:
        """The on-disk name of ``split`` and its shard urls, each local one checked to exist."""
        name = self.split_name(split)
        if name is None:
            raise ShardError(f"split {split!r} not found in {self.root} for --dataset wds (splits there: "
                             f"{', '.join(sorted(self._files)) or 'none'})")
        urls = self._files[name]
        for url in urls:
            if not is_url(url) and not Path(url).is_file():
                raise ShardError(f"{self.info_file}: shard {url} of split {name!r} does not exist; fix "
                                 f"splits.{name}.filenames or restore the file")
        return name, urls

    def shards(self, split: str) -> list[Shard]:
        """The shards of ``split`` with their sample counts (from ``_info.json``, else counted by reading)."""
        name, urls = self._urls(split)
        entry = (self.info or {}).get("splits", {}).get(name) if self.pattern is None else None
        if entry is not None and "shard_lengths" in entry:
            counts = entry["shard_lengths"]
            if len(counts) != len(urls) or not all(isinstance(c, int) and c >= 0 for c in counts):
                raise ShardError(f"{self.info_file}: splits.{name}.shard_lengths must hold one sample count per "
                                 f"file of splits.{name}.filenames ({len(urls)})")
        else:
            counts = [sum(1 for _ in iter_samples(url, _ANY_LABELS)) for url in urls]  # a count, labels unread
        return _with_offsets(urls, counts)

    def classes(self) -> list[str]:
        """Class names in label order (see the module's docstring for where they come from)."""
        info = self.info or {}
        if isinstance(info.get("classes"), list) and info["classes"]:
            return [str(c) for c in info["classes"]]
        text = _read_text(join(self.base, "classes.txt"))
        if text is not None:
            names = [line.strip() for line in text.splitlines() if line.strip()]
            if names:
                return names
        if isinstance(info.get("num_classes"), int):
            return [str(i) for i in range(info["num_classes"])]
        # one read, no count; labels read as sets, so a single label (3) and a set (1,4) both count
        labels = [label for url in self._urls("train")[1] for _, _, label in iter_samples(url, _ANY_LABELS)]
        if not labels:
            raise ShardError(f"{self.root}: the train split holds no samples")
        return [str(i) for i in range(max((i for label in labels for i in label), default=0) + 1)]


_ANY_LABELS = LabelSets(allow_empty=True)  # how the class count reads labels, single or sets


def _tar_members(url: str) -> Iterator[dict[str, Any]]:
    """The regular files of one shard as webdataset's ``{fname, data, __url__}`` dicts, then its end-of-shard
    ``{}``; a truncated or damaged tar is a ShardError naming it. A local uncompressed tar is read by
    :func:`dataloader.tar_stream.tar_files` (the hot path: webdataset's ``tarfile``-based iterator cost ~125 us a
    sample, six times the cost of opening and reading the image as a file; this ~24 us); URLs (http, fsspec) and
    compressed tars go through webdataset's own ``tar_file_expander``."""
    from webdataset.tariterators import tar_file_expander

    def handler(exn: Exception) -> bool:
        raise ShardError(f"{url}: not a readable tar file ({exn}); the shard is truncated or damaged: "
                         f"write it again") from None
    try:
        if not is_url(url) and is_plain_tar(url):
            for name, data in tar_files(url):
                if not _META.match(name):
                    yield {"fname": name, "data": data, "__url__": url}
            yield {}
            return
        with open_stream(url) as stream:
            yield from tar_file_expander([{"url": url, "stream": stream}], handler=handler)
    except (OSError, urllib.error.URLError) as e:
        if is_url(url) or not Path(url).is_file():
            raise ShardError(f"shard {url} cannot be opened ({e}); check --data") from None
        handler(e)
    except (tarfile.TarError, EOFError) as e:
        handler(e)


def iter_samples(url: str, sets: LabelSets | None = None) -> Iterator[tuple[str, bytes, Label]]:
    """``(key, encoded image, label)`` of every sample of one shard, in file order (webdataset's grouping);
    a sample without an image or a label, or with a label that is not a class index, is a ShardError. With
    label ``sets`` (``--multi_label``) the label is a set (see the module's docstring)."""
    from webdataset.tariterators import group_by_keys
    try:
        for sample in group_by_keys(_tar_members(url)):
            key = sample["__key__"]
            image = next((sample[s] for s in IMAGE_SUFFIXES if s in sample), None)
            labelled = "cls" in sample or (sets is not None and "json" in sample)
            if image is None or not labelled:
                what = "image (.jpg/.jpeg/.png/.webp)" if image is None else ".cls label" + (
                    " (or .json with 'labels')" if sets is not None else "")
                raise ShardError(f"{url}: sample {key!r} has no {what}; every sample needs both")
            if sets is not None:
                yield key, image, _label_set_of(url, key, sample, sets)
                continue
            text = sample["cls"].decode("utf-8", "replace").strip()
            if not text.lstrip("-").isdigit() or int(text) < 0:
                several = "; several labels are a multi-label dataset: add --multi_label" if len(
                    _SET_SPLIT.split(text)) > 1 else ""
                raise ShardError(f"{url}: sample {key!r}: label {text!r} in {key}.cls is not a class index{several}")
            yield key, image, int(text)
    except ValueError as e:  # group_by_keys: two files of one sample with the same suffix
        if isinstance(e, ShardError):
            raise
        raise ShardError(f"{url}: {e.args[0]}; every file of a sample needs its own suffix") from None


_SET_SPLIT = re.compile(r"[\s,]+")  # a .cls label set: class indices separated by commas or spaces


def _label_set_of(url: str, key: str, sample: dict[str, Any], sets: LabelSets) -> tuple[int, ...]:
    """A sample's label set: its ``.cls`` (``1,4``), else its ``.json``'s ``labels`` list."""
    if "cls" in sample:
        where = f"{url}: sample {key!r} ({key}.cls)"
        parts = [p for p in _SET_SPLIT.split(sample["cls"].decode("utf-8", "replace").strip()) if p]
    else:
        where = f"{url}: sample {key!r} ({key}.json)"
        try:
            record = json.loads(sample["json"])
        except (ValueError, UnicodeDecodeError):
            raise ShardError(f"{where}: not valid JSON; write {{\"labels\": [1, 4]}}") from None
        parts = record.get("labels") if isinstance(record, dict) else None
        if not isinstance(parts, list):
            raise ShardError(f"{where}: no 'labels' list; write {{\"labels\": [1, 4]}}, or the set in {key}.cls")
    if not parts and not sets.allow_empty:
        raise ShardError(sets.empty_error(where))
    bad = [p for p in parts if not (isinstance(p, int) and not isinstance(p, bool) and p >= 0)
           and not (isinstance(p, str) and p.isascii() and p.isdigit())]
    if bad:
        raise ShardError(f"{where}: label {bad[0]!r} is not a class index (a non-negative integer; several as 1,4)")
    return label_set(int(p) for p in parts)


def short_shard(url: str, found: int, expected: int) -> ShardError:
    """A shard that holds fewer samples than its count says: cut short (a tar ends at any member boundary)."""
    return ShardError(f"{url}: not a readable tar file (it holds {found} samples where {expected} were counted); "
                      f"the shard is truncated or damaged: write it again (or fix the count in {INFO_FILE})")


def sample_seed(seed: int, epoch: int, key: str) -> int:
    """The augmentation seed of one sample: a pure function of (run seed, epoch, key)."""
    digest = hashlib.blake2b(f"{seed}:{epoch}:{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") % 2**62


Piece = tuple[int, int, int]  # (shard index, first sample, end) inside one shard


def rank_pieces(shards: Sequence[Shard], order: Sequence[int], rank: int, world: int, train: bool) -> list[Piece]:
    """The pieces of shards that rank ``rank`` reads: its contiguous range of the samples of ``shards`` taken
    in ``order``. Training: ``N // world`` samples per rank (the rest left out); evaluation: every sample once."""
    total = sum(s.count for s in shards)
    if train:
        per = total // world
        begin, end = rank * per, (rank + 1) * per
    else:
        per, extra = divmod(total, world)
        begin = rank * per + min(rank, extra)
        end = begin + per + (rank < extra)
    pieces, at = [], 0
    for i in order:
        lo, hi = max(begin, at), min(end, at + shards[i].count)
        if lo < hi:
            pieces.append((i, lo - at, hi - at))
        at += shards[i].count
    return pieces


def worker_consumed(totals: Sequence[int], chunk: int, consumed: int) -> list[int]:
    """How many samples each worker had handed over when the main process had taken ``consumed``: the
    DataLoader takes one chunk (of up to ``chunk`` samples) from each worker in turn, skipping finished ones."""
    left, done = list(totals), [0] * len(totals)
    while consumed > 0 and any(left):
        for w in range(len(left)):
            if left[w] and consumed > 0:
                take = min(chunk, left[w], consumed)
                left[w] -= min(chunk, left[w])
                done[w] += take
                consumed -= take
    return done


class ShardDataset(IterableDataset):
    """One split of a shard set as a stream of ``(uint8 image after transform, label, split index)``.

    ``set_epoch(epoch, start)`` chooses the epoch and how many of this rank's samples to skip (a resume);
    ``rank``/``world_size`` and the worker count are set by :class:`ShardLoader`. The split index of a
    sample is its position in the split's shards in file order (stable, so evaluation outputs sort by it).
    """

    kind = "wds"

    def __init__(self, root: str | Path, split: str, class_names: Sequence[str] | None = None,
                 transform: Callable[[torch.Tensor], torch.Tensor] | None = None, skip_bad: bool = False,
                 max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS, train: bool = False, seed: int = 0,
                 pixels: PixelFormat = RGB8, sets: LabelSets | None = None):
        self.shard_set, self.sets, self.multi_label = ShardSet(root), sets, sets is not None
        self.root, self.split, self.transform, self.skip_bad = str(root), split, transform, skip_bad
        self.max_pixels, self.train, self.seed, self.pixels = max_pixels, train, seed, pixels
        self.class_names = list(class_names) if class_names is not None else self.shard_set.classes()
        self.shards = self.shard_set.shards(split)
        self.split_table = None
        self.num_samples = sum(s.count for s in self.shards)
        if not self.num_samples:
            raise ShardError(f"split {split!r} of {self.root} holds no samples")
        self.epoch = self.start = self.rank = 0
        self.world_size, self.workers, self.chunk = 1, 0, 32

    def __len__(self) -> int:
        return self.num_samples

    def rank_length(self) -> int:
        """The samples this rank reads in a whole epoch."""
        return sum(hi - lo for _, lo, hi in self.pieces())

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = epoch, start

    def order(self) -> list[int]:
        """The shard order of this epoch: shuffled per (seed, epoch) for training, file order otherwise."""
        if not self.train:
            return list(range(len(self.shards)))
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return torch.randperm(len(self.shards), generator=g).tolist()

    def pieces(self) -> list[Piece]:
        return rank_pieces(self.shards, self.order(), self.rank, self.world_size, self.train)

    def worker_pieces(self) -> list[list[Piece]]:
        """This rank's pieces dealt to its workers in turn."""
        pieces, n = self.pieces(), max(1, self.workers)
        return [pieces[w::n] for w in range(n)]

    def resume_plan(self) -> tuple[list[list[Piece]], int]:
        """Each worker's pieces left after skipping the ones it had wholly read before ``start``, and the
        number of samples read again (the approximation of a mid-epoch resume, see the module's docstring)."""
        dealt = self.worker_pieces()
        if not self.start:
            return dealt, 0
        done = worker_consumed([sum(hi - lo for _, lo, hi in p) for p in dealt], self.chunk, self.start)
        plans, again = [], 0
        for pieces, consumed in zip(dealt, done):
            skipped = read = 0
            while skipped < len(pieces) and read + pieces[skipped][2] - pieces[skipped][1] <= consumed:
                read += pieces[skipped][2] - pieces[skipped][1]
                skipped += 1
            plans.append(pieces[skipped:])
            again += consumed - read
        return plans, again

    def _raw(self, pieces: Iterable[Piece]) -> Iterator[tuple[str, bytes, Label, int]]:
        """``(key, encoded image, label, split index)`` of the samples of ``pieces``, in order."""
        for i, lo, hi in pieces:
            shard, position = self.shards[i], -1
            name = Path(shard.url).name
            for position, (key, data, label) in enumerate(iter_samples(shard.url, self.sets)):
                if position >= hi:
                    break
                if position >= lo:
                    top = label if isinstance(label, int) else max(label, default=-1)
                    if top >= len(self.class_names):
                        raise ShardError(f"{shard.url}: sample {key!r}: label {top} is out of range: there are "
                                         f"{len(self.class_names)} classes (labels 0..{len(self.class_names) - 1})")
                    yield f"{name}/{key}", data, label, shard.offset + position
            if position + 1 < hi:
                raise short_shard(shard.url, position + 1, shard.count)

    def _shuffled(self, items: Iterator[Any], rng: random.Random) -> Iterator[Any]:
        """A shuffle buffer of ``SHUFFLE_BUFFER`` items (training only)."""
        if not self.train:
            yield from items
            return
        buffer: list[Any] = []
        for item in items:
            buffer.append(item)
            if len(buffer) >= SHUFFLE_BUFFER:
                yield buffer.pop(rng.randrange(len(buffer)))
        rng.shuffle(buffer)
        yield from buffer

    def target(self, label: Label) -> int | torch.Tensor:
        """What a batch carries for ``label``: the class index, or a label set's multi-hot ``K`` vector."""
        return multi_hot(label, len(self.class_names)) if self.multi_label else label

    def decode(self, key: str, data: bytes, label: Label, index: int) -> tuple[torch.Tensor, Any, int] | None:
        """One sample decoded and transformed with its own seed (its label as :meth:`target`); None for a bad
        image under ``skip_bad``."""
        try:
            image = decode_pixels(data, name=f"{self.root}:{key}", max_pixels=self.max_pixels, fmt=self.pixels)
        except ImageDecodeError as e:
            self.skip_or_raise(e)
            return None
        if self.transform is not None:
            image = call_seeded(self.transform, image, sample_seed(self.seed, self.epoch, key))
        return image, self.target(label), index

    def __iter__(self) -> Iterator[Chunk]:
        """This worker's chunks of up to ``chunk`` samples, collated here (one tensor each to hand over, not one
        per sample): ``(images, labels, split indices, positions in the chunk, samples consumed)``; a bad image
        skipped under ``skip_bad`` is consumed but not kept."""
        info = get_worker_info()
        worker = info.id if info is not None else 0
        plans, _ = self.resume_plan()
        rng = random.Random(sample_seed(self.seed, self.epoch, f"buffer/{self.rank}/{worker}"))
        keys = keys_file(self.rank)  # tests: the keys this worker hands over
        chunk: list = []
        for key, data, label, index in self._shuffled(self._raw(plans[worker] if worker < len(plans) else []), rng):
            if keys is not None:
                keys.write(f"{self.epoch} {key}\n")
            chunk.append(self.decode(key, data, label, index))
            if len(chunk) == self.chunk:
                yield _collate_chunk(chunk)
                chunk = []
        if chunk:
            yield _collate_chunk(chunk)

    def load(self, index: int) -> torch.Tensor:
        """The decoded, untransformed image of split index ``index`` (read from its shard)."""
        i = bisect.bisect_right([s.offset for s in self.shards], index) - 1
        shard = self.shards[i]
        for position, (key, data, _) in enumerate(iter_samples(shard.url, self.sets)):
            if position == index - shard.offset:
                return decode_pixels(data, name=f"{shard.url}:{key}", max_pixels=self.max_pixels, fmt=self.pixels)
        raise IndexError(index)

    def decoded_batches(self, head: Callable[[torch.Tensor], torch.Tensor] | None,
                        workers: int) -> Iterator[list[tuple[int, torch.Tensor | None, str | None]]]:
        """The memory cache's pass (:func:`dataloader.cache.decoded_batches`): every sample of the split once,
        decoded and passed through ``head``, as lists of ``(split index, image or None, decode error or None)``;
        worker ``w`` of ``workers`` reads shards ``w, w + workers, ...`` whole. Records :attr:`samples` (keys
        and labels) on the way, so the labels are known once the pass is over."""
        recorded: list[tuple[str, Label] | None] = [None] * self.num_samples
        loader = DataLoader(_DecodeShards(self, head), batch_size=64, num_workers=min(workers, len(self.shards)),
                            collate_fn=list, generator=loader_generator())  # not a draw from the global one
        for batch in loader:
            for index, key, label, _, _ in batch:
                recorded[index] = (key, label)
            yield [(index, image, error) for index, _, _, image, error in batch]
        if any(item is None for item in recorded):  # every shard read whole: a missing one is a bug
            raise ShardError(f"the cache's pass over {self.root} ({self.split}) missed samples")
        self.__dict__["samples"] = recorded  # the cached property, from this pass

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, int] | None:
        """``(image after the transform, label, index)`` of split index ``index``, read from its shard (``None``
        for a bad image under ``skip_bad``): for a few picks, such as the CAM pictures, once the labels are
        known (:attr:`targets`); the epochs stream instead."""
        label = self.targets[index]
        try:
            image = self.load(index)
        except ImageDecodeError as e:
            self.skip_or_raise(e)
            return None
        return (self.transform(image) if self.transform is not None else image), self.target(label), index

    def first_items(self, n: int) -> list[tuple[torch.Tensor, int, int] | None]:
        """The first ``n`` samples of epoch 0 on rank 0 (the augmented preview), read in this process."""
        self.set_epoch(0)
        items = []
        for key, data, label, index in self._raw(self.pieces()):
            items.append(self.decode(key, data, label, index))
            if len(items) == n:
                break
        return items

    @functools.cached_property
    def targets(self) -> list[Label]:
        """The labels in split order, once the split has been read whole (:attr:`samples`: the memory cache's
        pass, or the keys of side files); before that a ShardError (not cached: a later access, once the split
        is read, gives the labels): reading a whole split for its labels alone is what streaming avoids."""
        if "samples" not in self.__dict__:
            raise ShardError("shards are streamed, so the labels of a split are not known up front (what "
                             "--class_weights auto, class-balanced sampling and per-class picks such as the CAM "
                             "pictures read): add --cache_dataset memory (the split is read whole, up front), give "
                             "--class_weights as numbers, or convert the data to another layout")
        return [label for _, label in self.samples]

    @functools.cached_property
    def samples(self) -> list[tuple[str, Label]]:
        """``("<shard file>/<key>", label)`` of every sample in split order (the order of the split index that
        every epoch, rank and worker yields with a sample): one more read of the split, without decoding,
        unless the memory cache's pass (:meth:`decoded_batches`) recorded them."""
        return [(f"{Path(s.url).name}/{key}", label) for s in self.shards
                for key, _, label in iter_samples(s.url, self.sets)]

    def key(self, index: int) -> str:
        """The name of split index ``index`` in side files (teacher outputs, curricula): ``<shard file>/<key>``."""
        return self.samples[index][0]

    def skip_or_raise(self, error: Exception | str) -> None:
        """A sample did not decode: raise, saying how to fix or skip it, or with ``skip_bad`` log the skip."""
        if not self.skip_bad:
            kind = type(error) if isinstance(error, ImageDecodeError) else ImageDecodeError
            raise kind(f"{error}; fix the shard (python utils/check_images.py {self.root} --dataset wds lists "
                       f"every bad sample), or pass --skip_bad_images") from None
        logger.warning("skipping %s", error)


class _DecodeShards(IterableDataset):
    """``(split index, key, label, image after head or None, decode error or None)`` of every sample of a
    :class:`ShardDataset`, worker ``w`` of ``n`` reading shards ``w, w + n, ...`` front to back."""

    def __init__(self, dataset: ShardDataset, head: Callable[[torch.Tensor], torch.Tensor] | None):
        self.dataset, self.head = dataset, head

    def __iter__(self) -> Iterator[tuple[int, str, int, torch.Tensor | None, str | None]]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        ds = self.dataset
        pieces = [(i, 0, shard.count) for i, shard in enumerate(ds.shards)][worker::workers]
        for key, data, label, index in ds._raw(pieces):
            try:
                image = decode_pixels(data, name=f"{ds.root}:{key}", max_pixels=ds.max_pixels, fmt=ds.pixels)
            except ImageDecodeError as e:
                yield index, key, label, None, str(e)
                continue
            yield index, key, label, self.head(image) if self.head is not None else image, None


Chunk = tuple  # (images, meta, consumed) or, multi-label, (images, meta, consumed, multi-hot targets)


def _collate_chunk(items: list) -> Chunk:
    """A worker's chunk as two tensors (see :meth:`ShardDataset.__iter__`): the images, and one ``3 x n`` int64
    tensor of labels, split indices and positions in the chunk; then the count of samples consumed. Two tensors,
    not four: each tensor a worker hands over costs a shared-memory segment and a file descriptor, which in a
    bytes-only read cost more than reading the tar. Multi-hot targets (label sets) cannot ride in the int64
    meta: they come as a fourth item, an ``n x K`` float tensor (the meta's label row then holds zeros)."""
    kept = [(position, item) for position, item in enumerate(items) if item is not None]
    if not kept:
        return torch.empty(0), torch.empty(3, 0, dtype=torch.long), len(items)
    images, labels, indices = default_collate([item for _, item in kept])
    positions = torch.tensor([position for position, _ in kept])
    if labels.ndim == 2:  # multi-hot label sets
        return images, torch.stack([torch.zeros_like(positions), indices.long(), positions]), len(items), labels
    meta = torch.stack([labels.long(), indices.long(), positions])
    return images, meta, len(items)


class ShardEpoch:
    """What the loops read of a sampler (``set_epoch``, ``len``) for a :class:`ShardLoader`."""

    def __init__(self, dataset: ShardDataset):
        self.dataset = dataset

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.dataset.set_epoch(epoch, start)

    def __len__(self) -> int:
        return max(0, self.dataset.rank_length() - self.dataset.start)


class ShardLoader:
    """Batches of ``batch_size`` consumed samples (the last one smaller, or dropped with ``drop_last``; a bad
    image skipped under ``skip_bad`` leaves its batch smaller, as the other layouts' do) from a
    :class:`ShardDataset`, read by ``workers`` processes (started anew each epoch: the epoch is theirs to
    read). Has what the loops use of a DataLoader: ``sampler.set_epoch``, ``batch_size``, ``drop_last``."""

    def __init__(self, dataset: ShardDataset, *, batch_size: int, workers: int, train: bool, rank: int = 0,
                 world_size: int = 1, pin_memory: bool = False):
        dataset.rank, dataset.world_size, dataset.workers = rank, world_size, workers
        dataset.chunk = batch_size
        self.dataset, self.batch_size, self.workers, self.pin_memory = dataset, batch_size, workers, pin_memory
        self.sampler = ShardEpoch(dataset)
        self.drop_last = train and len(self.sampler) % batch_size == 1  # a batch of one breaks batch norm

    def __len__(self) -> int:
        full, rest = divmod(len(self.sampler), self.batch_size)
        return full + (1 if rest and not self.drop_last else 0)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        _, again = self.dataset.resume_plan()
        if self.dataset.start:
            logger.info("resuming epoch %d of the shards at sample %d of this rank's %d: each worker skips the "
                        "shards it had read and reads the rest again (%d samples read again)",
                        self.dataset.epoch + 1, self.dataset.start, self.dataset.rank_length(), again)
        loader = DataLoader(self.dataset, batch_size=None, num_workers=self.workers, pin_memory=self.pin_memory,
                            prefetch_factor=4 if self.workers else None,
                            generator=loader_generator())  # a mid-epoch resume repeats the global RNG (workers.py)
        total, bound, done, buffer = len(self.sampler), self.batch_size, 0, None
        for images, meta, consumed, *multi_hot_targets in loader:
            if images.numel():
                part = (images, multi_hot_targets[0] if multi_hot_targets else meta[0], meta[1], meta[2] + done)
                buffer = part if buffer is None else tuple(torch.cat(pair) for pair in zip(buffer, part))
            done += consumed
            while bound <= min(done, total):
                batch, buffer = _cut(buffer, bound, self.empty_targets)
                yield batch
                bound += self.batch_size
            if done >= total:
                break
        if bound - self.batch_size < total and not self.drop_last:
            yield _cut(buffer, total, self.empty_targets)[0]

    @property
    def empty_targets(self) -> torch.Tensor:
        """The targets of a batch that kept no sample: ``0`` class indices, or ``0 x K`` multi-hot rows."""
        if self.dataset.multi_label:
            return torch.empty(0, len(self.dataset.class_names), dtype=torch.float32)
        return torch.empty(0, dtype=torch.long)


def _cut(buffer: tuple[torch.Tensor, ...] | None, bound: int,
         empty_targets: torch.Tensor) -> tuple[tuple, tuple | None]:
    """The samples of ``buffer`` consumed before ``bound`` (a batch) and the rest (None when none is left)."""
    if buffer is None:
        return (torch.empty(0, dtype=torch.uint8), empty_targets, torch.empty(0, dtype=torch.long)), None
    take = buffer[3] < bound
    if bool(take.all()):  # the usual case (a worker's chunk is one batch): no copy, nothing left over
        return buffer[:3], None
    return tuple(t[take] for t in buffer[:3]), tuple(t[~take] for t in buffer)


def shard_loader(dataset: ShardDataset, *, batch_size: int, workers: int, train: bool, rank: int, world_size: int,
                 pin_memory: bool, class_balanced: bool, decode_on_device: bool,
                 repeated_aug: int = 0) -> ShardLoader:
    """:func:`dataloader.loader.create_loader` for streamed shards (no memory cache); the options that need
    random access are refused."""
    refused = {"class-balanced sampling (--class_balanced) draws samples by index": (
                   train and class_balanced, "add --cache_dataset memory (the split read into memory up front), "),
               "repeated augmentation (--repeated_aug) draws samples by index": (
                   train and bool(repeated_aug), "add --cache_dataset memory (the split read into memory up front), "),
               "--gpu_decode reads samples by index": (decode_on_device, "")}
    for what, (asked, alternative) in refused.items():
        if asked:
            raise ShardError(f"{what}, which streamed shards (--dataset wds) do not offer; {alternative}drop it, or "
                             f"convert the data to another layout")
    return ShardLoader(dataset, batch_size=batch_size, workers=workers, train=train, rank=rank,
                       world_size=world_size, pin_memory=pin_memory)


# The limits of one shard written by :func:`write_wds_split` (its ``max_samples`` argument, ``--shard_samples`` of
# ``utils/make_digits.py`` and ``utils/convert_data.py``, defaults to the sample count): a shard closes before it
# would pass either.
SHARD_MAX_BYTES = 256 * 2**20
DEFAULT_SHARD_SAMPLES = 1000


def _image_suffix(data: bytes) -> str:
    """The file suffix of encoded image bytes, from their signature."""
    if data.startswith(b"\x89PNG"):
        return "png"
    if data.startswith(b"\xff\xd8"):
        return "jpg"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    raise ShardError("a record's image is not PNG, JPEG or WebP bytes")


def _write_tar(path: Path, records: Sequence[Record]) -> int:
    """One shard: ``KEY.<image suffix>`` and ``KEY.cls`` per record, written atomically; returns its count."""
    with atomic_write(path, "wb") as f, tarfile.open(fileobj=f, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for key, data, label in records:
            text = str(label) if isinstance(label, int) else ",".join(map(str, label))  # a label set: 1,4
            for name, body in ((f"{key}.{_image_suffix(data)}", data), (f"{key}.cls", text.encode())):
                member = tarfile.TarInfo(name)
                member.size, member.mtime, member.mode = len(body), 0, 0o644
                tar.addfile(member, io.BytesIO(body))
    return len(records)


def write_wds_split(out_dir: Path, split: str, records: Iterable[Record],
                    class_names: Sequence[str], jobs: int, max_samples: int = DEFAULT_SHARD_SAMPLES) -> None:
    """Write ``records`` (key, encoded image bytes, label index or set) as ``out_dir/{split}-{i:06d}.tar`` shards of
    at most ``max_samples`` samples / ``SHARD_MAX_BYTES`` bytes, ``jobs`` shards at a time, and record
    them in ``out_dir/_info.json`` (timm's format, with ``classes``); shards of an earlier, longer write of
    the split are removed. A key must not contain a dot (webdataset cuts the suffix at the first one)."""
    if max_samples < 1:
        raise ShardError(f"a shard holds at least one sample, got at most {max_samples} (--shard_samples)")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    def write(i: int, group: Sequence[Record]) -> int:
        for key, _, label in group:
            indices = [label] if isinstance(label, int) else list(label)
            if "." in key.rsplit("/", 1)[-1] or not all(0 <= i < len(class_names) for i in indices):
                raise ShardError(f"record {key!r}: a key has no dot and a label is in 0..{len(class_names) - 1}")
        return _write_tar(out_dir / f"{split}-{i:06d}.tar", group)

    # a tar header and padding per member, about 1 KB a sample
    counts = write_parts(cut_parts(records, SHARD_MAX_BYTES, max_samples, overhead=1024), write, jobs)
    names = [f"{split}-{i:06d}.tar" for i in range(len(counts))]
    ours = re.compile(rf"{re.escape(split)}-\d{{6}}\.tar")  # this writer's names: a user's other tars stay
    for stale in out_dir.glob(f"{split}-*.tar"):
        if ours.fullmatch(stale.name) and stale.name not in names:
            stale.unlink()
    _update_info(out_dir, split, names, counts, class_names)
    logger.info("wrote %d %s samples in %d shards to %s", sum(counts), split, len(names), out_dir)


def _update_info(out_dir: Path, split: str, names: list[str], counts: list[int], class_names: Sequence[str]) -> None:
    """``_info.json``: this split's entry (timm's keys) beside the others already there, and the classes."""
    path = out_dir / INFO_FILE
    info = json.loads(path.read_text()) if path.is_file() else {}
    name = SPLIT_NAMES.get(split, (split,))[0] if split == "val" else split
    info.setdefault("name", out_dir.name)
    info.setdefault("splits", {})[name] = {"name": name, "filenames": names, "shard_lengths": counts,
                                           "num_samples": sum(counts)}
    info["classes"], info["num_classes"] = list(class_names), len(class_names)
    write_json_atomic(path, info)
