"""Automatic seeded, stratified splits of a dataset's train part (``--val_fraction``, ``--test_fraction``).

A layout only has to list train's samples: :func:`carve` takes them (with a stable key per sample) and
gives each carved split its share of every class, ``round(fraction * n)`` images of a class of ``n``, so
per-class counts are within one image of the fraction. Which images go where is a seeded permutation of
each class's keys in sorted order: a pure function of (keys, labels, fractions, seed), the same in every
process, worker and rerun, whatever order the layout listed the files in.

Label sets (``--multi_label``) cannot be stratified by the set itself (most sets are rare or unique):
:func:`carve_sets` splits them by iterative stratification, class by class, rarest class first, so that a class
of a few images still has one in train and in each carved split (see there for the rule).

A training run writes the split to ``<run>/split.json`` (:func:`write_split`); a resumed run, and the modes
that read a run's data, recompute it and compare (:func:`check_split`), so data that would now split
differently is refused instead of silently mixing held-out images into training.
"""
from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from utils.atomic import write_json_atomic

from .labels import Label, class_counts, is_multi

SPLIT_FILE = "split.json"
CARVABLE = ("val", "test")  # the splits a fraction can carve out of train


class SplitError(ValueError):
    """The data cannot be split as asked, or would split differently from a run's saved split."""


@dataclass(frozen=True)
class Holdout:
    """What to carve out of train: a fraction per split (0: not carved) and the seed of the permutation."""
    val_fraction: float = 0.0
    test_fraction: float = 0.0
    seed: int = 0

    def fraction(self, split: str) -> float:
        return {"val": self.val_fraction, "test": self.test_fraction}.get(split, 0.0)

    def carved(self) -> tuple[str, ...]:
        """The splits taken out of train (those with a fraction above 0)."""
        return tuple(s for s in CARVABLE if self.fraction(s) > 0)

    def describe(self) -> str:
        return f"--val_fraction {self.val_fraction} --test_fraction {self.test_fraction} --split_seed {self.seed}"


def carve(keys: Sequence[str], labels: Sequence[Label], holdout: Holdout) -> dict[str, list[int]]:
    """Indices (into ``keys``/``labels``) of ``train`` and each carved split, each list in ascending order.

    Per class: its samples sorted by key, permuted by ``random.Random`` seeded from (seed, label), the first
    ``round(test_fraction * n)`` to test, the next ``round(val_fraction * n)`` to val, the rest to train.
    A class left with no training image is an error naming it. Label sets: :func:`carve_sets`.
    """
    if is_multi(labels):
        return carve_sets(keys, labels, holdout)
    by_class: dict[int, list[int]] = {}
    for index, label in enumerate(labels):
        by_class.setdefault(label, []).append(index)
    parts: dict[str, list[int]] = {name: [] for name in ("train", *holdout.carved())}
    for label, members in sorted(by_class.items()):
        members.sort(key=lambda i: keys[i])
        random.Random(f"split:{holdout.seed}:{label}").shuffle(members)
        start = 0
        for name in reversed(holdout.carved()):  # test first, then val
            count = round(holdout.fraction(name) * len(members))
            parts[name] += members[start:start + count]
            start += count
        if start >= len(members):
            raise SplitError(f"class {label} has {len(members)} image(s): {holdout.describe()} would leave it no "
                             f"training image; lower the fractions or add images of that class")
        parts["train"] += members[start:]
    return {name: sorted(indices) for name, indices in parts.items()}


def carve_sets(keys: Sequence[str], labels: Sequence[tuple[int, ...]], holdout: Holdout) -> dict[str, list[int]]:
    """:func:`carve` for label sets: a simple iterative stratification (after Sechidis et al., 2011).

    The classes are taken rarest first (fewest images; ties: lower index), then the images without labels as
    one more group. Each image of the class not placed yet, in a permutation of its images sorted by key seeded
    from (seed, class), goes to the part that still wants the most images of that class (ties: train, then
    val, then test), and counts for every label it has. A carved split wants ``fraction * n`` images of a
    class of ``n``, and at least one when ``n`` exceeds the number of carved splits; train wants the rest. So
    a class with at least 2 images (3 with val and test carved) has one in train and one in each carved split,
    unless rarer classes placed all its images first; the share of every larger class is near its fraction.
    A class left with no training image is an error naming it.
    """
    names = ("train", *holdout.carved())
    counts = class_counts(labels)
    members: dict[int, list[int]] = {}
    for index, label in enumerate(labels):
        for c in label or (-1,):  # -1: the images without labels, one group
            members.setdefault(c, []).append(index)
    wants = {c: _wants(len(group), holdout, names) for c, group in members.items()}
    placed: dict[int, str] = {}
    for c in sorted(members, key=lambda c: (c == -1, counts.get(c, 0), c)):
        group = sorted(members[c], key=lambda i: keys[i])
        random.Random(f"split:{holdout.seed}:{c}").shuffle(group)
        for index in (i for i in group if i not in placed):
            part = max(names, key=lambda name: (wants[c][name], -names.index(name)))
            placed[index] = part
            for label in labels[index] or (-1,):
                wants[label][part] -= 1
    for c in sorted(counts):
        if not any(placed[i] == "train" for i in members[c]):
            raise SplitError(f"class {c} has {counts[c]} image(s): {holdout.describe()} would leave it no training "
                             f"image; lower the fractions or add images of that class")
    return {name: sorted(i for i, part in placed.items() if part == name) for name in names}


def _wants(n: int, holdout: Holdout, names: Sequence[str]) -> dict[str, float]:
    """How many images of a class of ``n`` each part wants (see :func:`carve_sets`)."""
    carved = {name: holdout.fraction(name) * n for name in names[1:]}
    if n > len(carved):
        carved = {name: max(1.0, want) for name, want in carved.items()}
    return {"train": n - sum(carved.values()), **carved}


def split_table(keys: Sequence[str], labels: Sequence[Label], holdout: Holdout, data: str = "") -> dict[str, Any]:
    """The split as written to ``split.json``: the settings, the dataset root it was made from (``data``, for
    :func:`read_saved_holdout`; not compared) and, per split, ``[key, label]`` rows."""
    parts = carve(keys, labels, holdout)
    return {"val_fraction": holdout.val_fraction, "test_fraction": holdout.test_fraction,
            "split_seed": holdout.seed, "data": data,
            "splits": {name: [[keys[i], labels[i]] for i in indices] for name, indices in parts.items()}}


def write_split(run_dir: str | Path, table: dict[str, Any]) -> Path:
    """Write ``table`` (:func:`split_table`) to ``<run_dir>/split.json`` atomically."""
    return write_json_atomic(Path(run_dir) / SPLIT_FILE, table, indent=1)


def read_saved_holdout(run_dir: str | Path, data: str | Path) -> Holdout | None:
    """The fractions and seed of a run's saved split, or None when the run has no ``split.json`` or made it
    from another dataset root than ``data`` (a model evaluated on other data reads that data's own splits)."""
    file = Path(run_dir) / SPLIT_FILE
    if not file.is_file():
        return None
    saved = _load(file)
    if saved.get("data") and Path(saved["data"]) != Path(data).resolve():
        return None
    try:
        return Holdout(float(saved["val_fraction"]), float(saved["test_fraction"]), int(saved["split_seed"]))
    except (KeyError, TypeError, ValueError):
        raise SplitError(f"{file} is not a split file of this project (no val_fraction, test_fraction, "
                         f"split_seed); remove it, or start the run afresh with --overwrite") from None


def check_split(run_dir: str | Path, table: dict[str, Any]) -> bool:
    """Compare ``table`` with ``<run_dir>/split.json``: True when they are equal, False when the run has no
    saved split; a difference is a :class:`SplitError` naming the run folder and what differs."""
    file = Path(run_dir) / SPLIT_FILE
    if not file.is_file():
        return False
    saved = _load(file)
    difference = _difference(saved, table)
    if difference:
        raise SplitError(f"run folder {run_dir}: the data would now split differently from its {SPLIT_FILE} "
                         f"({difference}); use the data and split flags the run was started with, or another "
                         f"--tag (or --overwrite) to start afresh")
    return True


def _load(file: Path) -> dict[str, Any]:
    try:
        saved = json.loads(file.read_text())
    except (OSError, ValueError) as e:
        raise SplitError(f"{file} cannot be read ({e}); remove it, or start the run afresh with --overwrite") \
            from None
    if not isinstance(saved, dict):
        raise SplitError(f"{file} is not a split file of this project; remove it, or start afresh with --overwrite")
    return saved


def _row(row: Sequence[Any]) -> tuple:
    """A split table's ``[key, label]`` row, hashable (a label set, a JSON list once saved, as a tuple)."""
    return tuple(tuple(value) if isinstance(value, list) else value for value in row)


def _difference(saved: dict[str, Any], table: dict[str, Any]) -> str:
    """What differs between two split tables, in a few words ('' when nothing does)."""
    settings = [f"{key} {saved.get(key)!r} -> {table[key]!r}" for key in ("val_fraction", "test_fraction",
                                                                         "split_seed") if saved.get(key) != table[key]]
    if settings:
        return "; ".join(settings)
    old = saved.get("splits") if isinstance(saved.get("splits"), dict) else {}
    new = table["splits"]
    for name in sorted(set(old) | set(new)):
        before = {_row(row) for row in old.get(name, []) if isinstance(row, list)}
        after = {_row(row) for row in new.get(name, [])}
        if before != after:
            gone, added = sorted(before - after), sorted(after - before)
            example = f"e.g. {gone[0][0]!r} left it" if gone else f"e.g. {added[0][0]!r} joined it"
            return f"split {name!r}: {len(gone)} sample(s) left, {len(added)} joined, {example}"
    return ""
