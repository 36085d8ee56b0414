"""YAML config files that build on each other: a file may name ``base: other.yaml`` (or a list of files),
read first and merged under it, as MMPretrain's ``_base_`` does, so that recipes share their common settings
from one file instead of copies.

Merging: mappings merge key by key, recursively; lists and scalars are replaced by the later file.
``base: [a.yaml, b.yaml]`` merges a, then b, then the file itself. Base paths are relative to the file that
names them. A cycle is one error naming the chain. Every file is read with ``yaml.safe_load``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from config.base import ConfigError

BASE_KEY = "base"


def merge_config(under: dict, over: dict) -> dict:
    """``over`` merged onto ``under`` (a new dict): mappings merge recursively, anything else is replaced."""
    merged = dict(under)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge_config(merged[key], value)
        else:
            merged[key] = value
    return merged


def _read_mapping(path: Path, shown: str) -> dict:
    """One file's YAML mapping; a missing file, bad YAML or a non-mapping is a ConfigError naming it."""
    if not path.is_file():
        raise ConfigError(f"--config: file {shown!r} does not exist")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"--config: {shown} is not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"--config: {shown} must hold a mapping of flag names to values, got {type(data).__name__}")
    return data


def _base_paths(value: Any, path: Path) -> list[Path]:
    """The files a ``base:`` value names (one path or a list), resolved relative to ``path``'s folder."""
    names = value if isinstance(value, list) else [value]
    if not names or not all(isinstance(n, str) and n.strip() for n in names):
        raise ConfigError(f"--config: {path}: base: expected a file name or a list of file names (relative to "
                          f"the file), got {value!r}")
    return [(path.parent / Path(n).expanduser()) for n in names]


def read_config_tree(path: str | Path, _chain: tuple[Path, ...] = ()) -> tuple[dict[str, Any], dict[str, Path]]:
    """The merged mapping of config file ``path`` and its ``base:`` files (without the ``base`` key), and
    for each top-level key the file its value came from (for error messages)."""
    file = Path(path)
    key = file.resolve()
    if key in _chain:
        names = " -> ".join(str(p) for p in (*_chain[_chain.index(key):], key))
        raise ConfigError(f"--config: {_chain[-1]}: base: files that build on each other in a cycle: {names}; "
                          f"drop one of these base: entries")
    data = _read_mapping(file, str(path))
    merged: dict[str, Any] = {}
    origin: dict[str, Path] = {}
    if BASE_KEY in data:
        for base in _base_paths(data.pop(BASE_KEY), file):
            if not base.is_file():
                raise ConfigError(f"--config: {file}: base: file {str(base)!r} does not exist")
            values, where = read_config_tree(base, (*_chain, key))
            merged = merge_config(merged, values)
            origin.update(where)
    merged = merge_config(merged, data)
    origin.update({k: file for k in data})
    return merged, origin


def read_config_file(path: str | Path) -> dict[str, Any]:
    """The flat mapping of config file ``path`` with its ``base:`` files merged in (what ``--config`` reads)."""
    return read_config_tree(path)[0]
