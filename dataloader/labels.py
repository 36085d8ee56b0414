"""Label sets of a multi-label dataset (``--multi_label``): how a sample's labels are written and what a batch
holds.

A single-label sample's label is one class index (``int``); a multi-label sample's is a sorted tuple of class
indices (``()``: no label, all negative, allowed only with ``--allow_empty_labels``). Batches carry multi-hot
float targets ``N x K`` (1.0 where the label is present), what the sigmoid losses and the metrics take.

How labels are written, per layout (:class:`LabelSets` splits them):
  csv/jsonl  a label cell holding several names, ``"cat dog"`` (``--label_delim``; by default any run of
             spaces and commas), or in JSONL a list ``["cat", "dog"]``
  txt/zip    ``path 1,4`` (class indices; with classes.txt names too, as csv)
  hf         a ``Sequence(ClassLabel)`` column (lists of class indices)
  wds        a ``.cls`` holding ``1,4`` or a ``.json`` with ``{"labels": [1, 4]}``
"""
from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from typing import Iterable, Sequence, Union

import torch

Label = Union[int, tuple[int, ...]]

_DEFAULT_SPLIT = re.compile(r"[\s,]+")


@dataclass(frozen=True)
class LabelSets:
    """How a multi-label dataset writes several labels in one field: ``delim`` between them (None: any run of
    whitespace and commas), and whether a sample may have none (``allow_empty``, ``--allow_empty_labels``)."""
    delim: str | None = None
    allow_empty: bool = False

    def split(self, text: str | Sequence[str]) -> list[str]:
        """The label names in ``text`` (a JSON list is already split), blanks dropped, in the order written."""
        if not isinstance(text, str):
            return [str(part).strip() for part in text if str(part).strip()]
        parts = _DEFAULT_SPLIT.split(text) if self.delim is None else text.split(self.delim)
        return [part.strip() for part in parts if part.strip()]

    def empty_error(self, where: str) -> str:
        """The message for a sample with no label when that is not allowed."""
        return (f"{where}: no label: with --multi_label an image without labels is all negative only where you say "
                f"so (--allow_empty_labels); else give it its labels")


def label_set(indices: Iterable[int]) -> tuple[int, ...]:
    """A sample's label set: sorted, each class once."""
    return tuple(sorted(set(int(i) for i in indices)))


def multi_hot(label: Label, num_classes: int) -> torch.Tensor:
    """A float ``K`` vector with 1.0 at each class of ``label`` (a set, or one index)."""
    target = torch.zeros(num_classes, dtype=torch.float32)
    indices = [label] if isinstance(label, int) else list(label)
    if indices:
        target[torch.as_tensor(indices, dtype=torch.long)] = 1.0
    return target


def target_tensor(targets: Sequence[Label], num_classes: int) -> torch.Tensor:
    """A dataset's targets as one tensor: class indices ``N`` (int64), or multi-hot ``N x K`` (float32) when
    the labels are sets."""
    if targets and not isinstance(targets[0], int):
        matrix = torch.zeros(len(targets), num_classes, dtype=torch.float32)
        rows = [i for i, labels in enumerate(targets) for _ in labels]
        cols = [c for labels in targets for c in labels]
        if rows:
            matrix[torch.as_tensor(rows), torch.as_tensor(cols)] = 1.0
        return matrix
    return torch.as_tensor(list(targets), dtype=torch.long)


def class_counts(targets: Iterable[Label]) -> Counter:
    """Images per class: a sample counts once for each of its labels (a set) or for its one class."""
    counts: Counter = Counter()
    for label in targets:
        if isinstance(label, int):
            counts[label] += 1
        else:
            counts.update(label)
    return counts


def is_multi(targets: Sequence[Label]) -> bool:
    """Whether ``targets`` are label sets (a multi-label dataset)."""
    return bool(targets) and not isinstance(targets[0], int)


def label_names(label: Label | torch.Tensor, class_names: Sequence[str], sep: str = " ") -> str:
    """A sample's label as text: its class name, or the names of its label set (a multi-hot vector or a tuple)
    joined by ``sep`` (``"(none)"`` for an empty set)."""
    if isinstance(label, torch.Tensor):
        label = int(label) if label.ndim == 0 else tuple(torch.nonzero(label > 0.5).flatten().tolist())
    if isinstance(label, int):
        return class_names[label]
    return sep.join(class_names[i] for i in label) or "(none)"
