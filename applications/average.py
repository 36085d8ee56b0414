"""``--average``: average the weights of several checkpoints of one model into one checkpoint.

    python main.py --average a.pth b.pth c.pth --out soup.pth
    python main.py --average last:5 --arch resnet18 --tag default --out output/resnet18/default/avg_last5.pth

``last:K`` / ``best:K`` read the run's ``checkpoints/kept.json`` (``--keep_last`` / ``--checkpoint_hist``).
The averaged weights get batch-norm statistics recomputed over ``--bn_batches`` training batches (the
``--precise_bn`` code: averaged running statistics do not describe the averaged weights' activations), are
evaluated on ``--eval_split`` next to each source, and written (atomically) as a checkpoint that
``--evaluation``, ``--predict``, the exports and ``--train --pretrained`` read.
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from engine import amp_dtype, evaluate, precise_bn
from engine.averaging import average_sources, average_state_dicts, averaged_checkpoint, check_same_model
from models import extract_state_dict, load_state_dict_checked
from models.spec import ModelSpec
from utils.checkpoint import load_checkpoint, save_checkpoint
from utils.misc import resolve_device

from .setup.common import (
    build_dataset,
    build_loader,
    data_class_names,
    model_from_checkpoint,
    preprocessor,
    run_dir_for,
)

logger = logging.getLogger(__name__)


def run(cfg: argparse.Namespace) -> dict[str, Any]:
    """Average ``--average``'s checkpoints, recompute BN statistics, evaluate, write ``--out``."""
    device = resolve_device(cfg.device)
    paths = average_sources(cfg.average, run_dir_for(cfg.output, cfg.arch, cfg.tag) / "checkpoints")
    ckpts = [load_checkpoint(p) for p in paths]
    state_dicts = [extract_state_dict(c) for c in ckpts]
    check_same_model(paths, ckpts, state_dicts)
    averaged = averaged_checkpoint(average_state_dicts(state_dicts), ckpts[-1], paths)
    fallback = averaged.get("class_names") or data_class_names(cfg)  # a bare state dict: the data's classes
    model, spec = model_from_checkpoint(paths[-1], cfg, fallback_class_names=fallback, ckpt=averaged)
    model.to(device)
    if cfg.bn_batches:
        recompute_bn(cfg, model, spec, device)
        averaged["model"] = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    save_checkpoint(averaged, cfg.out)
    logger.info("averaged %d checkpoints into %s", len(paths), cfg.out)
    result: dict[str, Any] = {"out": str(cfg.out), "averaged": [str(p) for p in paths],
                              "average": score(cfg, model, spec, device)}
    sources = []
    for path, sd in zip(paths, state_dicts):
        load_state_dict_checked(model, sd, path)
        sources.append({"file": str(path), **score(cfg, model, spec, device)})
    result["sources"] = sources
    logger.info("%s split: averaged %s; sources %s", cfg.eval_split, _numbers(result["average"]),
                "; ".join(_numbers(s) for s in sources))
    return result


def recompute_bn(cfg: argparse.Namespace, model: nn.Module, spec: ModelSpec, device: torch.device) -> None:
    """Batch-norm statistics of ``model`` recomputed over ``--bn_batches`` batches of the training split
    (seen through the model's evaluation transform, in ``--seed``'s training order)."""
    dataset = build_dataset(cfg, "train", spec.class_names, train=False, spec=spec)
    loader = build_loader(cfg, dataset, train=True, device=device)
    precise_bn(model, loader, 0, cfg.bn_batches, preprocess=preprocessor(spec, device),
               dtype=amp_dtype(cfg.amp, cfg.amp_dtype, device))


def score(cfg: argparse.Namespace, model: nn.Module, spec: ModelSpec, device: torch.device) -> dict[str, Any]:
    """Top-1 and loss (NLL; BCE for a multi-label model, with its mAP) of ``model`` on ``--eval_split``."""
    dataset = build_dataset(cfg, cfg.eval_split, spec.class_names, train=False, fallback=True, spec=spec)
    loader = build_loader(cfg, dataset, train=False, device=device)
    criterion = nn.BCEWithLogitsLoss() if spec.multi_label else nn.CrossEntropyLoss()
    metrics = evaluate(model, loader, criterion, preprocess=preprocessor(spec, device),
                       dtype=amp_dtype(cfg.amp, cfg.amp_dtype, device), multi_label=spec.multi_label,
                       thresholds=spec.decision_thresholds if spec.multi_label else 0.5)
    keys = ("top1", "loss", "map") if spec.multi_label else ("top1", "loss")
    return {"split": dataset.split, **{k: metrics[k] for k in keys}}


def _numbers(row: dict[str, Any]) -> str:
    name = Path(row["file"]).name + " " if "file" in row else ""
    extra = f" mAP {row['map']:.2f}" if row.get("map") is not None else ""
    return f"{name}top-1 {row['top1']:.2f} loss {row['loss']:.4f}{extra}"
