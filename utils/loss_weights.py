"""Turn the ``--class_weights`` and ``--cost_matrix`` flag values into tensors, with clear errors.

Files hold numbers separated by whitespace, commas or newlines; blank lines and ``#`` comments are
skipped. Every error is a ``ValueError`` that names the flag (and the file and row where there is one).
"""
from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Sequence

import torch

__all__ = ["load_class_weights", "load_cost_matrix"]

_SEPARATORS = re.compile(r"[\s,]+")


def _tokens(line: str) -> list[str]:
    return [tok for tok in _SEPARATORS.split(line.split("#", 1)[0]) if tok]


def _parse(flag: str, tokens: Sequence, where: str) -> list[float]:
    values = []
    for tok in tokens:
        try:
            if isinstance(tok, bool):
                raise ValueError
            value = float(tok)
        except (TypeError, ValueError):
            raise ValueError(f"{flag}: {where}: {tok!r} is not a number") from None
        if not math.isfinite(value):
            raise ValueError(f"{flag}: {where}: {tok!r} is not a finite number")
        if value < 0:
            raise ValueError(f"{flag}: {where}: {tok!r} is negative; weights and costs must be >= 0")
        values.append(value)
    return values


def _read_lines(flag: str, path: str | Path) -> list[tuple[int, list[str]]]:
    """``(line number, tokens)`` of the non-empty lines of ``path``."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{flag}: file not found: {path}")
    text = path.read_text(encoding="utf-8")
    lines = [(number, _tokens(line)) for number, line in enumerate(text.splitlines(), start=1)]
    return [(number, tokens) for number, tokens in lines if tokens]


def _is_inline_list(spec: str) -> bool:
    tokens = _tokens(spec)
    try:
        [float(tok) for tok in tokens]
    except ValueError:
        return False
    return bool(tokens)


def is_auto(spec) -> bool:
    """Whether ``spec`` (a ``--class_weights`` value) asks for inverse class frequencies, which need the counts."""
    return isinstance(spec, str) and spec.strip().lower() == "auto"


def load_class_weights(spec, class_counts: Sequence[int] | None) -> torch.Tensor:
    """Per-class loss weights (1-D float tensor) from ``spec``.

    ``spec`` is a list of numbers; a path to a text file of numbers; a string of numbers
    (``"1,2,0.5"``); or ``"auto"``: inverse class frequency ``w_c = (1 / n_c) / mean_k(1 / n_k)``
    from ``class_counts``, so the weights average to 1. The length must equal ``len(class_counts)``
    (skipped when ``class_counts`` is None, except under ``auto``, which needs it).
    """
    flag = "--class_weights"
    if isinstance(spec, torch.Tensor):
        spec = spec.tolist()
    if is_auto(spec):
        if class_counts is None:
            raise ValueError(f"{flag} auto needs the per-class sample counts")
        counts = list(class_counts)
        if not counts:
            raise ValueError(f"{flag} auto: the dataset has no classes")
        empty = [c for c, n in enumerate(counts) if n <= 0]
        if empty:
            raise ValueError(f"{flag} auto: class(es) {empty} have no samples, so their inverse frequency "
                             f"is undefined; give explicit weights instead")
        inverse = [1.0 / n for n in counts]
        mean = sum(inverse) / len(inverse)
        return torch.tensor([w / mean for w in inverse], dtype=torch.float32)
    if isinstance(spec, (str, Path)):
        if isinstance(spec, str) and not Path(spec).is_file() and _is_inline_list(spec):
            source = "the given list"
            values = _parse(flag, _tokens(spec), source)
        else:
            source = str(spec)
            values = []
            for number, tokens in _read_lines(flag, spec):
                values += _parse(flag, tokens, f"{spec}, line {number}")
            if not values:
                raise ValueError(f"{flag}: {spec} holds no numbers")
    elif isinstance(spec, Sequence):
        source = "the given list"
        values = _parse(flag, spec, source)
    else:
        raise ValueError(f"{flag} must be a list of numbers, a file path or 'auto', got {spec!r}")
    if class_counts is not None and len(values) != len(class_counts):
        raise ValueError(f"{flag}: {source} has {len(values)} weights but the dataset has "
                         f"{len(class_counts)} classes")
    if values and not any(values):
        raise ValueError(f"{flag}: every weight is 0, the loss would be 0")
    return torch.tensor(values, dtype=torch.float32)


def load_cost_matrix(path: str | Path, num_classes: int) -> torch.Tensor:
    """A ``C x C`` cost matrix ``M[true, predicted]`` from a text file of ``C`` rows of ``C`` numbers.

    Rows are the non-empty lines (``#`` comments skipped); errors name ``--cost_matrix``, the file
    and the row (with its line number).
    """
    flag = "--cost_matrix"
    lines = _read_lines(flag, path)
    rows = []
    for row, (number, tokens) in enumerate(lines, start=1):
        where = f"{path}, row {row} (line {number})"
        values = _parse(flag, tokens, where)
        if len(values) != num_classes:
            raise ValueError(f"{flag}: {where} has {len(values)} numbers, expected {num_classes} "
                             f"(one per class)")
        rows.append(values)
    if len(rows) != num_classes:
        raise ValueError(f"{flag}: {path} has {len(rows)} rows, expected {num_classes} (one per class)")
    return torch.tensor(rows, dtype=torch.float32)
