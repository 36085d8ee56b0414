"""Turning the resolved config into parts: run directory, datasets, loaders, precision, model restore.

Only ``applications/`` reads the whole config; these helpers pass explicit values to the factories.
"""
from __future__ import annotations

import argparse
import logging
import os
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ContextManager, Sequence

import torch
import torch.nn as nn

from dataloader import (BatchPreprocessor, ClassificationDataset, create_loader, create_transform,
                        read_class_names, resolve_split)
from dataloader.io import DEFAULT_MAX_IMAGE_PIXELS
from dataloader.transforms import INTERPOLATIONS
from models import check_model_name, create_model, extract_state_dict, load_state_dict_checked
from utils.checkpoint import load_checkpoint

logger = logging.getLogger(__name__)

# Config keys that define the model and its preprocessing: evaluation takes them from the checkpoint.
MODEL_KEYS = ("arch", "num_classes", "image_size", "mean", "std", "interpolation", "eval_resize", "crop_pct",
              "criterion")


def run_dir_for(output: str, arch: str, tag: str) -> Path:
    """``<output>/<arch>/<tag>`` (a ``/`` in the arch, as in ``timm/resnet18``, becomes ``-``).

    Checked before anything touches the disk: ``arch`` must be a known model and both names one plain
    folder name (not empty, ``.`` or ``..``, no separator), so the run directory is always a folder two
    levels below ``output`` and whatever a run writes or deletes inside it stays there.
    """
    check_model_name(arch)
    for flag, name in (("--arch", arch.replace("/", "-")), ("--tag", tag)):
        if name.strip(".") == "" or any(sep and sep in name for sep in (os.sep, os.altsep, "\0")):
            raise ValueError(f"{flag} {name!r} cannot name the run folder <output>/<arch>/<tag>: "
                             f"use a plain folder name (not '.' or '..', no path separators)")
    return Path(output) / arch.replace("/", "-") / tag


def apply_weights_preprocessing(cfg: argparse.Namespace) -> Any:
    """With named ``--pretrained`` weights: resolve them, make sure they are in the library's cache (else
    ``WeightsUnavailable`` before any work starts), and fill the preprocessing keys the user left unset
    with the weights' own. Returns the ``NamedWeights``, or None for no or local weights."""
    from config import PREPROCESSING_KEYS
    from models.hub import fetch_weights, is_weights_name, resolve_weights
    if not is_weights_name(cfg.pretrained):
        return None
    weights = resolve_weights(cfg.arch, cfg.pretrained)
    fetch_weights(weights)
    for key in PREPROCESSING_KEYS:
        if key == "interpolation" and getattr(cfg, key) is None and weights.preprocessing[key] not in INTERPOLATIONS:
            logger.warning("the weights were trained with %s resizing, which this project does not offer: bilinear "
                           "instead (set --interpolation to choose)", weights.preprocessing[key])
            cfg.interpolation = "bilinear"
        if getattr(cfg, key) is None:
            setattr(cfg, key, weights.preprocessing[key])
            logger.info("%s = %s from %s", key, weights.preprocessing[key], weights.source)
        else:
            logger.info("%s = %s as set (the weights' own is %s)", key, getattr(cfg, key), weights.preprocessing[key])
    return weights


def checkpoint_run_dir(path: str | Path) -> Path:
    """The run directory a checkpoint belongs to (``<run>/checkpoints/x.pth`` -> ``<run>``)."""
    path = Path(path).resolve()
    return path.parent.parent if path.parent.name == "checkpoints" else path.parent


def check_num_classes(requested: int | None, class_names: Sequence[str], data: str) -> int:
    """The class count: the data's, which ``--num_classes`` (when given) must equal."""
    found = len(class_names)
    if requested is not None and requested != found:
        raise ValueError(f"--num_classes {requested} disagrees with the data: {data} has {found} classes "
                         f"({', '.join(class_names[:10])}{', ...' if found > 10 else ''}); "
                         f"drop --num_classes or fix the data")
    return found


def build_dataset(cfg: argparse.Namespace, split: str, class_names: Sequence[str], train: bool,
                  fallback: bool = False, policy: nn.Module | None = None) -> ClassificationDataset:
    """The dataset of ``split`` with the training (with ``policy``) or evaluation transform from the config."""
    if fallback:
        split = resolve_split(cfg.data, cfg.dataset, split)
    transform = create_transform(train, cfg.image_size, train_resize=cfg.train_resize, rrc_scale=cfg.rrc_scale,
                                 hflip=cfg.hflip, eval_resize=cfg.eval_resize, crop_pct=cfg.crop_pct,
                                 policy=policy, random_erasing=cfg.random_erasing if train else 0.0,
                                 interpolation=cfg.interpolation)
    return ClassificationDataset(cfg.data, cfg.dataset, split, class_names=class_names, transform=transform,
                                 skip_bad=getattr(cfg, "skip_bad_images", False),
                                 max_pixels=getattr(cfg, "max_image_pixels", DEFAULT_MAX_IMAGE_PIXELS))


def build_loader(cfg: argparse.Namespace, dataset: ClassificationDataset, train: bool,
                 device: torch.device, dist_info: Any = None) -> torch.utils.data.DataLoader:
    """A loader over ``dataset`` with the config's batch size, workers and seed (this rank's shard under DDP)."""
    rank, world = (dist_info.rank, dist_info.world_size) if dist_info is not None else (0, 1)
    if cfg.gpu_decode and device.type != "cuda":
        raise ValueError(f"--gpu_decode decodes JPEGs with nvjpeg on a CUDA device, but this run is on {device}; "
                         f"drop --gpu_decode (the CPU workers decode)")
    return create_loader(dataset, batch_size=cfg.batch_size, workers=cfg.workers, train=train, seed=cfg.seed,
                         pin_memory=device.type == "cuda", class_balanced=train and cfg.class_balanced,
                         rank=rank, world_size=world, cache=cfg.cache_dataset,
                         cache_max_gb=cfg.cache_max_gb, device=device,
                         decode_on_device=cfg.gpu_decode)


def data_class_names(cfg: argparse.Namespace) -> list[str]:
    """Class names of ``--data`` (from its train split or classes.txt)."""
    return read_class_names(cfg.data, cfg.dataset)


def amp_dtype(enabled: bool, choice: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype, or None for full precision: bf16 where supported, else fp16 on CUDA."""
    if not enabled:
        return None
    if choice == "fp16":
        return torch.float16
    if choice == "bf16" or device.type != "cuda" or torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float16


def autocast(device: torch.device, dtype: torch.dtype | None) -> ContextManager:
    """``torch.autocast`` for ``dtype``, or a no-op context for full precision."""
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext()


def preprocessor(cfg: argparse.Namespace | dict[str, Any], device: torch.device) -> BatchPreprocessor:
    """The on-device uint8 -> normalised float step with the config's mean and std."""
    get = cfg.get if isinstance(cfg, dict) else lambda k: getattr(cfg, k, None)
    return BatchPreprocessor(get("mean"), get("std"), device, channels_last=bool(get("channels_last")))


def model_from_checkpoint(path: str | Path, cfg: argparse.Namespace,
                          fallback_class_names: Sequence[str]) -> tuple[nn.Module, dict[str, Any], list[str]]:
    """Build the model a checkpoint was trained as and load its weights.

    Returns the model, the model-defining config (``MODEL_KEYS``: the checkpoint's own values win over
    the command line, so evaluation applies the preprocessing the model was trained with) and the
    class names it carries. A bare state dict carries none: ``--arch`` and ``fallback_class_names``
    (the data's) are used instead.
    """
    ckpt = load_checkpoint(path)
    saved = ckpt.get("config") if isinstance(ckpt.get("config"), dict) else {}
    for k in MODEL_KEYS:
        if k in saved and getattr(cfg, k) not in (None, saved[k]):
            logger.info("using the checkpoint's %s=%s (the command line had %s)", k, saved[k], getattr(cfg, k))
    model_cfg = {k: saved.get(k, getattr(cfg, k)) for k in MODEL_KEYS}
    class_names = list(ckpt.get("class_names") or fallback_class_names)
    model_cfg["num_classes"] = len(class_names)
    model = create_model(model_cfg["arch"], len(class_names))
    load_state_dict_checked(model, extract_state_dict(ckpt), path)
    return model, model_cfg, class_names


@dataclass
class Restored:
    """A checkpoint ready for inference: the model on its device, in eval mode, and what it was trained as."""
    model: nn.Module
    model_cfg: dict[str, Any]
    class_names: list[str]
    device: torch.device
    cfg: argparse.Namespace  # the command line's config with the checkpoint's model keys laid over it


def restore_for_inference(cfg: argparse.Namespace, device: torch.device | None = None) -> Restored:
    """Load ``--resume`` for inference on ``--data``, whose classes must be the model's, onto ``device``
    (default: ``--device``'s)."""
    from utils.misc import resolve_device
    device = device or resolve_device(cfg.device)
    data_classes = data_class_names(cfg)
    model, model_cfg, class_names = model_from_checkpoint(cfg.resume, cfg, fallback_class_names=data_classes)
    if data_classes != class_names:
        raise ValueError(f"{cfg.data} has classes {data_classes[:10]} but {cfg.resume} was trained on "
                         f"{class_names[:10]}; use data with the model's classes")
    return Restored(model.to(device).eval(), model_cfg, class_names, device,
                    argparse.Namespace(**{**vars(cfg), **model_cfg}))


def predict_split(restored: Restored, split: str, *, fallback: bool = False,
                  progress: bool = False) -> tuple[ClassificationDataset, dict[str, Any]]:
    """Run the restored model over ``split``: the dataset and ``evaluate``'s outputs (logits in dataset order)."""
    from .train import evaluate
    cfg = restored.cfg
    dataset = build_dataset(cfg, split, restored.class_names, train=False, fallback=fallback)
    loader = build_loader(cfg, dataset, train=False, device=restored.device)
    result = evaluate(restored.model, loader, preprocess=preprocessor(restored.model_cfg, restored.device),
                      dtype=amp_dtype(cfg.amp, cfg.amp_dtype, restored.device), progress=progress,
                      return_outputs=True, desc=f"predict {dataset.split}")
    return dataset, result
