"""Weight averaging (``--average``): several checkpoints of one model become one, as timm's
``avg_checkpoints.py`` and model soups (Wortsman et al., 2022) do.

The floating tensors are averaged with equal weight (in float64, cast back to their dtype); the others
(``num_batches_tracked``, integer buffers) are the last checkpoint's. Which files: paths, or ``last:K`` /
``best:K`` of a run's ``checkpoints/kept.json`` (written by ``--keep_last`` / ``--checkpoint_hist``). The
averaged checkpoint holds weights, spec, classes and config (no optimizer): every inference mode reads it,
and ``--train --pretrained`` starts from it.
"""
from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from utils.checkpoint import CheckpointError

from .state import KEPT_INDEX

logger = logging.getLogger(__name__)

KEPT_PATTERN = re.compile(r"(last|best):(\d+)")
AVERAGED_KEYS = ("class_names", "config", "arch", "model_spec")  # what the averaged file keeps of the last source


def average_state_dicts(state_dicts: Sequence[Mapping[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The equal-weight mean of ``state_dicts`` (same keys and shapes): floating tensors averaged, the
    others (integer buffers such as ``num_batches_tracked``) taken from the last one."""
    if not state_dicts:
        raise ValueError("nothing to average: give at least one checkpoint")
    last = state_dicts[-1]
    averaged: dict[str, torch.Tensor] = {}
    for key, value in last.items():
        if not torch.is_floating_point(value):
            averaged[key] = value.clone()
            continue
        total = torch.zeros(value.shape, dtype=torch.float64)
        for sd in state_dicts:
            total += sd[key].to(torch.float64)
        averaged[key] = (total / len(state_dicts)).to(value.dtype)
    return averaged


def check_same_model(paths: Sequence[Path], ckpts: Sequence[Mapping[str, Any]],
                     state_dicts: Sequence[Mapping[str, torch.Tensor]]) -> None:
    """Refuse (CheckpointError, one line) checkpoints of another architecture, other classes, or other
    tensors than the first one's."""
    first, first_sd = ckpts[0], state_dicts[0]
    for path, ckpt, sd in zip(paths[1:], ckpts[1:], state_dicts[1:]):
        for key, what in (("arch", "architecture"), ("class_names", "classes")):
            if ckpt.get(key) != first.get(key):
                raise CheckpointError(f"--average: {path} has {what} {_short(ckpt.get(key))} but {paths[0]} has "
                                      f"{_short(first.get(key))}; average checkpoints of one model only")
        if sd.keys() != first_sd.keys() or any(sd[k].shape != first_sd[k].shape for k in sd):
            raise CheckpointError(f"--average: {path} holds other tensors than {paths[0]} (another model "
                                  f"variant); average checkpoints of one model only")


def _short(value: Any) -> str:
    return repr(value[:10] if isinstance(value, list) else value)


def kept_files(folder: Path, which: str, k: int) -> list[Path]:
    """The epoch files ``kept.json`` in ``folder`` lists: the last ``k`` (``which='last'``, oldest first) or
    the best ``k`` (``which='best'``, best first)."""
    index_path = folder / KEPT_INDEX
    if not index_path.is_file():
        raise FileNotFoundError(f"--average {which}:{k}: {index_path} does not exist; train with --keep_last K "
                                f"or --checkpoint_hist N (and the same --output/--arch/--tag) to keep epochs")
    entries = json.loads(index_path.read_text()).get(which, [])
    if len(entries) < k:
        flag = "--keep_last" if which == "last" else "--checkpoint_hist"
        raise ValueError(f"--average {which}:{k}: {index_path} keeps {len(entries)} {which} epoch(s); ask for "
                         f"fewer, or train with {flag} {k}")
    chosen = entries[-k:] if which == "last" else entries[:k]
    return [folder / entry["file"] for entry in chosen]


def average_sources(items: Sequence[str], checkpoint_folder: Path) -> list[Path]:
    """The files ``--average`` names: each item a path, or ``last:K`` / ``best:K`` of ``checkpoint_folder``."""
    paths: list[Path] = []
    for item in items:
        match = KEPT_PATTERN.fullmatch(item)
        paths += kept_files(checkpoint_folder, match[1], int(match[2])) if match else [Path(item)]
    return paths


def averaged_checkpoint(state: dict[str, torch.Tensor], last: Mapping[str, Any],
                        sources: Sequence[Path] = ()) -> dict[str, Any]:
    """A weights-only checkpoint of ``state`` with the last source's spec, classes and config (and the
    ``sources`` averaged, when given). A ``--calibrate`` temperature is not kept: it was fitted to the
    source's logits, and new weights need a new fit (the spec's temperature is 1 again, logged)."""
    ckpt: dict[str, Any] = {"model": state}
    if sources:
        ckpt["averaged_from"] = [str(p) for p in sources]
    ckpt.update({k: last[k] for k in AVERAGED_KEYS if last.get(k) is not None})
    spec = ckpt.get("model_spec")
    if isinstance(spec, Mapping) and float(spec.get("temperature", 1.0)) != 1.0:
        logger.warning("the averaged weights are uncalibrated: the source's --calibrate temperature %s is not kept "
                       "(fitted to its logits); run --calibrate on the averaged checkpoint", spec["temperature"])
        ckpt["model_spec"] = {**spec, "temperature": 1.0}
    return ckpt
