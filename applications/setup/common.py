"""Turning the resolved config into parts: run directory, side-file names, datasets, loaders, model restore.

Only ``applications/`` reads the whole config; these helpers pass explicit values to the factories.
"""
from __future__ import annotations

import argparse
import contextlib
import itertools
import logging
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn as nn

from config import flag_defaults
from dataloader import (
    BatchPreprocessor,
    ClassificationDataset,
    Columns,
    create_loader,
    create_transform,
    read_class_names,
    resolve_split,
)
from dataloader.datasets import DatasetError, holdout_samples, label_sets_from
from dataloader.io import DEFAULT_MAX_IMAGE_PIXELS, PixelFormat
from dataloader.shards import ShardDataset, side_folder
from dataloader.sources import SourceImages, source_images
from dataloader.splits import Holdout, check_split, read_saved_holdout
from dataloader.transforms import INTERPOLATIONS
from engine import amp_dtype, evaluate
from engine.features import embed
from models import check_model_name, create_model, extract_state_dict, load_state_dict_checked
from models.spec import ModelSpec
from models.tta import ProbabilityAverage
from utils.atomic import temp_path
from utils.checkpoint import load_checkpoint

logger = logging.getLogger(__name__)

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


def apply_weights_preprocessing(cfg: argparse.Namespace) -> list[tuple[int, str]]:
    """With named ``--pretrained`` weights: resolve them, make sure they are in the library's cache (else
    ``WeightsUnavailable`` before any work starts), and fill the preprocessing keys the user left unset
    with the weights' own (a package's input size too). Returns what was decided, as (logging level, line) notes for
    :func:`log_notes` to write once the run's log file is open (they belong in its log.txt); none for no
    or local weights."""
    from config import PREPROCESSING_KEYS
    from config.shared import PACKAGE_KEYS, channel_values
    from models.hub import fetch_weights, is_weights_name, resolve_weights
    from utils.weights_name import is_package_ref
    if not is_weights_name(cfg.pretrained):
        return []
    weights = resolve_weights(cfg.arch, cfg.pretrained)
    notes = [(logging.INFO, f"pretrained {weights.name}: {fetch_weights(weights)}")]
    package = is_package_ref(cfg.pretrained)
    if package:  # its config.json is there now (hf-hub: fetched into the cache with the weights)
        weights = resolve_weights(cfg.arch, cfg.pretrained)
        notes.append((logging.INFO, f"the package's classes: {', '.join(weights.preprocessing['class_names'])} "
                                    f"(its head is kept when the data has as many classes, else a new head)"))
    for key in PACKAGE_KEYS if package else PREPROCESSING_KEYS:
        bicubic16 = weights.preprocessing[key] == "bicubic" and getattr(cfg, "bit_depth", 8) == 16  # see config
        if key == "interpolation" and getattr(cfg, key) is None and (weights.preprocessing[key] not in INTERPOLATIONS
                                                                     or bicubic16):
            where = " at --bit_depth 16" if bicubic16 else ""
            notes.append((logging.WARNING, f"the weights were trained with {weights.preprocessing[key]} resizing, "
                                           f"which this project does not offer{where}: bilinear instead (set "
                                           f"--interpolation to choose)"))
            cfg.interpolation = "bilinear"
        if getattr(cfg, key) is None:
            setattr(cfg, key, weights.preprocessing[key])
            notes.append((logging.INFO, f"{key} = {weights.preprocessing[key]} from {weights.source}"))
        else:
            notes.append((logging.INFO, f"{key} = {getattr(cfg, key)} as set (the weights' own is "
                                        f"{weights.preprocessing[key]})"))
        if key in ("mean", "std") and len(getattr(cfg, key)) != cfg.in_chans:  # the weights' RGB values, averaged
            setattr(cfg, key, channel_values(getattr(cfg, key), cfg.in_chans))
            notes.append((logging.INFO, f"{key} = {getattr(cfg, key)} for --in_chans {cfg.in_chans} (the average)"))
    notes.append((logging.INFO, weights_test_size(cfg)[1]))
    return notes


def weights_test_size(cfg: argparse.Namespace) -> tuple[dict[str, Any], str]:
    """The test size and crop fraction of named ``--pretrained`` weights that a model trained at ``--image_size``
    records in its spec (``test_image_size``, ``test_crop_pct``; empty when it records none), and a line saying
    what was recorded or why nothing was. Resolved from the library's metadata: no network, no file.

    Only a model trained at the weights' own input size records them: timm's test size goes with that training
    size (``resnet50.a1_in1k``: trained at 224, evaluated at 288), not with another one."""
    from models.hub import is_weights_name, resolve_weights
    if not is_weights_name(cfg.pretrained):
        return {}, (f"no test size: the weights file {cfg.pretrained} names none" if cfg.pretrained else
                    "no test size: the model trains from scratch (no --pretrained weights define one)")
    weights = resolve_weights(cfg.arch, cfg.pretrained)
    pre = weights.preprocessing
    test = {key: pre.get(key) for key in ("test_image_size", "test_crop_pct")}
    if all(value is None for value in test.values()):
        return {}, f"no test size: the {weights.name} weights define none ({weights.source} has no test_input_size)"
    sizes = f"test size {size_text(test['test_image_size'] or pre['image_size'])}, crop_pct {test['test_crop_pct']}"
    if list(cfg.image_size) != list(pre["image_size"]):
        return {}, (f"no test size recorded: the {weights.name} weights' {sizes} go with training at "
                    f"{size_text(pre['image_size'])}, and this model trains at --image_size "
                    f"{size_text(cfg.image_size)}")
    return test, f"{sizes} from {weights.source}, recorded in the model's spec (--use_test_size evaluates at it)"


def size_text(size: Sequence[int]) -> str:
    """An image size as the logs write it: ``224x224``."""
    return "x".join(str(s) for s in size)


def check_use_test_size(cfg: argparse.Namespace) -> None:
    """``--train --use_test_size``: the final test runs at the weights' test size, which they must define (and
    the model train at their input size); refused before training starts, not after it."""
    if getattr(cfg, "use_test_size", False):
        test, line = weights_test_size(cfg)
        if not test:
            raise ValueError(f"--use_test_size: {line}; drop --use_test_size to test at --image_size "
                             f"{size_text(cfg.image_size)}")


def evaluation_spec(spec: ModelSpec, use_test_size: bool, source: str | Path) -> ModelSpec:
    """``spec``, or with ``use_test_size`` (``--use_test_size``) ``spec`` at its recorded test size and crop
    fraction, logged. A model that records none (trained from scratch, from torchvision weights, from a timm tag
    without ``test_input_size``, or at another size than its weights') is refused with one line, not evaluated
    at its training size under a flag that asked for another (timm falls back silently)."""
    if not use_test_size:
        return spec
    if not spec.has_test_size:
        raise ValueError(f"--use_test_size: {source} records no test size (the weights it was fine-tuned from define "
                         f"none, or it trained at another size than theirs); drop --use_test_size to evaluate at its "
                         f"training size {size_text(spec.image_size)}")
    test = spec.at_test_size()
    logger.info("--use_test_size: evaluating at %s, crop_pct %s (the weights' test size; trained at %s, crop_pct %s)",
                size_text(test.image_size), test.crop_pct, size_text(spec.image_size), spec.crop_pct)
    return test


def input_geometry(spec: ModelSpec, use_test_size: bool) -> dict[str, Any]:
    """The evaluation input a report records (its metrics.json ``input``): size, resize, crop fraction, and
    whether that is the weights' test size (``--use_test_size``)."""
    return {"image_size": list(spec.image_size), "eval_resize": spec.eval_resize, "crop_pct": spec.crop_pct,
            "interpolation": spec.interpolation, "test_size": bool(use_test_size)}


def log_notes(notes: Sequence[tuple[int, str]]) -> None:
    """Log notes made before the run's log file was open (:func:`apply_weights_preprocessing`)."""
    for level, line in notes:
        logger.log(level, "%s", line)


# The file that says which checkpoint a loose checkpoint's folder (``<output>/<arch>/<stem>``) belongs to.
CHECKPOINT_NOTE = "checkpoint.txt"


def checkpoint_run_dir(path: str | Path, output: str | Path, arch: str) -> Path:
    """The folder where a mode writes what it makes of checkpoint ``path`` (its log, ``export/``,
    ``eval_<split>/``, ``predict/``, ``visual/``): only ever a run folder of ours.

    A checkpoint inside a run directory (``<run>/checkpoints/x.pth`` with ``<run>/config.yaml``) has that
    run. Any other (a loose ``~/models/model.pth``) gets ``<output>/<arch>/<stem>`` (the checkpoint's own
    arch when it names one, else ``arch``), made here with a ``checkpoint.txt`` naming the checkpoint; when
    a folder of that name holds anything else (a training run, another checkpoint's outputs) the next free
    ``<stem>-2``, ``<stem>-3``... is used. Nothing is written beside the user's own file.
    """
    path = Path(path).resolve()
    if path.parent.name == "checkpoints" and (path.parent.parent / "config.yaml").is_file():
        return path.parent.parent
    arch = _checkpoint_arch(path) or arch
    base = run_dir_for(str(output), arch, path.stem.strip(".") or "checkpoint")
    for n in itertools.count(1):
        folder = base if n == 1 else base.with_name(f"{base.name}-{n}")
        folder.mkdir(parents=True, exist_ok=True)
        if _claim(folder / CHECKPOINT_NOTE, str(path)):
            logger.info("%s is not in a run directory (<run>/checkpoints/ beside <run>/config.yaml): what this "
                        "mode writes goes to %s", path, folder)
            return folder
    raise AssertionError("unreachable")


def _claim(note: Path, owner: str) -> bool:
    """Whether ``note``'s folder belongs to ``owner``: its note names it, or the folder was empty and this
    process made the note (a link of a complete file, which fails if another process made one first)."""
    if not os.path.lexists(note) and not any(note.parent.iterdir()):
        tmp = temp_path(note.parent.parent / f"{note.parent.name}-{note.name}")  # outside: the folder stays empty
        try:
            tmp.write_text(owner + "\n")
            with contextlib.suppress(FileExistsError):
                os.link(tmp, note)
        finally:
            tmp.unlink(missing_ok=True)
    return note.is_file() and not note.is_symlink() and note.read_text().strip() == owner


def _checkpoint_arch(path: Path) -> str | None:
    """The architecture a checkpoint names (its spec, or its saved config; None for a bare state dict),
    read without loading its tensors (``mmap``, ``weights_only``). A file that does not load that way is
    loaded by :func:`load_checkpoint`, which raises its one-line CheckpointError before any folder is made."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # noqa: BLE001 - e.g. an old format that cannot be mapped, or a bad file: say which
        ckpt = load_checkpoint(path)
    if not isinstance(ckpt, dict):
        return None
    for source in (ckpt.get("model_spec"), ckpt, ckpt.get("config")):
        arch = source.get("arch") if isinstance(source, dict) else None
        if isinstance(arch, str) and arch:
            try:
                check_model_name(arch)
            except ValueError:
                return None
            return arch
    return None


def curriculum_path(cfg: argparse.Namespace) -> Path:
    """``--curriculum_file`` or ``DATA/curriculum.txt`` (written by ``--make_curriculum``, read by training)."""
    return Path(cfg.curriculum_file) if cfg.curriculum_file else side_folder(cfg.data, cfg.dataset) / "curriculum.txt"


def teacher_file(cfg: argparse.Namespace, arch: str) -> Path:
    """Where the teacher ``arch`` writes its probabilities (``--knowledge``)."""
    return side_folder(cfg.data, cfg.dataset) / f"distill_{arch.replace('/', '-')}.txt"


def check_num_classes(requested: int | None, class_names: Sequence[str], data: str) -> int:
    """The class count: the data's, which ``--num_classes`` (when given) must equal."""
    found = len(class_names)
    if requested is not None and requested != found:
        raise ValueError(f"--num_classes {requested} disagrees with the data: {data} has {found} classes "
                         f"({', '.join(class_names[:10])}{', ...' if found > 10 else ''}); "
                         f"drop --num_classes or fix the data")
    return found


def data_holdout(cfg: argparse.Namespace) -> Holdout | None:
    """The splits carved out of train (``--val_fraction``, ``--test_fraction``, ``--split_seed``), None when
    neither fraction is set: where every mode's datasets (:func:`build_dataset`) take the split from."""
    if not (getattr(cfg, "val_fraction", 0.0) or getattr(cfg, "test_fraction", 0.0)):
        return None
    return Holdout(cfg.val_fraction, cfg.test_fraction, cfg.split_seed)


def adopt_run_split(cfg: argparse.Namespace, checkpoint: str | Path, class_names: Sequence[str]) -> None:
    """For a checkpoint in a run folder that saved a ``split.json`` (trained with ``--val_fraction`` /
    ``--test_fraction``) of this ``--data``, and a command line that sets no fractions of its own: take the
    run's fractions and seed, so evaluation, knowledge and curricula read the run's held-out images, not its
    training ones; the split is recomputed and must equal the saved one (else a SplitError naming the run
    folder)."""
    path = Path(checkpoint).resolve()
    run_dir = path.parent.parent
    if path.parent.name != "checkpoints" or data_holdout(cfg) is not None:
        return
    saved = read_saved_holdout(run_dir, cfg.data)
    if saved is None:
        return
    cfg.val_fraction, cfg.test_fraction, cfg.split_seed = saved.val_fraction, saved.test_fraction, saved.seed
    check_split(run_dir, holdout_samples(Path(cfg.data), cfg.dataset, class_names, saved, data_columns(cfg))[2])
    logger.info("the split of %s: %s", run_dir / "split.json", saved.describe())


def build_dataset(cfg: argparse.Namespace, split: str, class_names: Sequence[str], train: bool,
                  fallback: bool = False, policy: nn.Module | None = None,
                  spec: ModelSpec | None = None) -> ClassificationDataset:
    """The dataset of ``split`` with the training (with ``policy``) or evaluation transform from the config,
    or, given a trained model's ``spec``, with that model's evaluation transform; with ``--val_fraction`` /
    ``--test_fraction``, train, val and test are the parts of train that :func:`data_holdout` carves."""
    holdout = data_holdout(cfg)
    if fallback:
        split = resolve_split(cfg.data, cfg.dataset, split, holdout, data_columns(cfg))
    if spec is not None:
        transform = spec_transform(spec)
    else:
        transform = create_transform(train, cfg.image_size, train_resize=cfg.train_resize, rrc_scale=cfg.rrc_scale,
                                     hflip=cfg.hflip, eval_resize=cfg.eval_resize, crop_pct=cfg.crop_pct,
                                     policy=policy, random_erasing=cfg.random_erasing if train else 0.0,
                                     interpolation=cfg.interpolation)
    if cfg.dataset == "wds":  # streamed shards (dataloader/shards.py)
        if holdout is not None:
            raise DatasetError("--val_fraction/--test_fraction carve splits out of a list of samples, which streamed "
                               "shards (--dataset wds) do not have: write the val/test splits as shards")
        return ShardDataset(cfg.data, split, class_names, transform, skip_bad=getattr(cfg, "skip_bad_images", False),
                            max_pixels=getattr(cfg, "max_image_pixels", DEFAULT_MAX_IMAGE_PIXELS), train=train,
                            seed=cfg.seed, pixels=pixel_format(spec or cfg), sets=label_sets_from(cfg))
    return ClassificationDataset(cfg.data, cfg.dataset, split, class_names=class_names, transform=transform,
                                 skip_bad=getattr(cfg, "skip_bad_images", False),
                                 max_pixels=getattr(cfg, "max_image_pixels", DEFAULT_MAX_IMAGE_PIXELS),
                                 holdout=holdout, columns=data_columns(cfg), pixels=pixel_format(spec or cfg))


def build_loader(cfg: argparse.Namespace, dataset: ClassificationDataset, train: bool,
                 device: torch.device, dist_info: Any = None) -> torch.utils.data.DataLoader:
    """A loader over ``dataset`` with the config's batch size, workers and seed (this rank's shard under DDP)."""
    rank, world = (dist_info.rank, dist_info.world_size) if dist_info is not None else (0, 1)
    if cfg.gpu_decode and device.type != "cuda":
        raise ValueError(f"--gpu_decode decodes JPEGs with nvjpeg on a CUDA device, but this run is on {device}; "
                         f"drop --gpu_decode (the CPU workers decode)")
    return create_loader(dataset, batch_size=cfg.batch_size, workers=cfg.workers, train=train, seed=cfg.seed,
                         pin_memory=device.type == "cuda", class_balanced=train and cfg.class_balanced,
                         repeated_aug=cfg.repeated_aug if train else 0,
                         rank=rank, world_size=world, cache=cfg.cache_dataset,
                         cache_max_gb=cfg.cache_max_gb, device=device,
                         decode_on_device=cfg.gpu_decode)


def data_class_names(cfg: argparse.Namespace) -> list[str]:
    """Class names of ``--data`` (from its train split or classes.txt)."""
    return read_class_names(cfg.data, cfg.dataset, data_columns(cfg))


def data_columns(cfg: argparse.Namespace) -> Columns:
    """A csv dataset's path and label columns (``--path_col``, ``--label_col``), a Hugging Face dataset's image
    and label columns (``--image_col``, ``--label_col``)."""
    return Columns(getattr(cfg, "path_col", "path"), getattr(cfg, "label_col", None),
                   getattr(cfg, "image_col", None), label_sets_from(cfg))


def spec_transform(spec: ModelSpec) -> nn.Module:
    """The evaluation transform a trained model expects (its input size and resize)."""
    return create_transform(False, spec.image_size, eval_resize=spec.eval_resize, crop_pct=spec.crop_pct,
                            interpolation=spec.interpolation)


def source_dataset(cfg: argparse.Namespace, source: str, flag: str, spec: ModelSpec, skip_bad: bool) -> SourceImages:
    """The unlabelled images of ``source`` (``--predict``, ``--visual_source``) as ``spec``'s model sees them:
    files (an image, a folder, a list) or every row of a Hugging Face dataset (with ``--dataset hf`` also a cached
    Hub name), read at the model's pixel format."""
    paths, reader = source_images(source, flag, hub_name=cfg.dataset == "hf", columns=data_columns(cfg))
    return SourceImages(paths, spec_transform(spec), cfg.max_image_pixels, skip_bad=skip_bad,
                        pixels=pixel_format(spec), reader=reader)


def pixel_format(source: argparse.Namespace | ModelSpec) -> PixelFormat:
    """The decoded images' channels and bit depth: a trained model's (its spec) or the config's (``--in_chans``,
    ``--bit_depth``; 8-bit RGB for a config without them)."""
    return PixelFormat(int(getattr(source, "in_chans", 3)), int(getattr(source, "bit_depth", 8)))


def preprocessor(source: argparse.Namespace | ModelSpec, device: torch.device) -> BatchPreprocessor:
    """The on-device uint8 -> normalised float step with the mean and std of the config (training: with its
    ``--channels_last``) or of a trained model's spec (inference)."""
    return BatchPreprocessor(source.mean, source.std, device,
                             channels_last=bool(getattr(source, "channels_last", False)))


def training_spec(cfg: argparse.Namespace, class_names: Sequence[str]) -> ModelSpec:
    """The spec of the model ``--train`` makes (saved in its checkpoints), with the test size of its named
    ``--pretrained`` weights where they define one (:func:`weights_test_size`)."""
    return replace(ModelSpec.from_config(vars(cfg), class_names), **weights_test_size(cfg)[0])


def checkpoint_spec(ckpt: dict[str, Any], cfg: argparse.Namespace, fallback_class_names: Sequence[str]) -> ModelSpec:
    """The spec of the model in ``ckpt``: its own ``model_spec``; for a checkpoint saved before specs, built
    from its stored config (the command line filling what it lacks); for a bare state dict, from the
    command line. Class names: the checkpoint's, else ``fallback_class_names``."""
    if isinstance(ckpt.get("model_spec"), dict):
        spec = ModelSpec.from_dict(ckpt["model_spec"])
    else:
        saved = ckpt.get("config") if isinstance(ckpt.get("config"), dict) else {}
        spec = ModelSpec.from_config({**vars(cfg), **saved}, ckpt.get("class_names") or fallback_class_names)
    if not spec.class_names:
        spec = replace(spec, class_names=tuple(fallback_class_names))
    defaults = {**flag_defaults(), "criterion": "softmax"}  # --criterion unset: softmax for a single-label command
    for key, value in spec.config_values().items():
        given = getattr(cfg, key, None)
        given = list(given) if isinstance(given, tuple) else given
        if given is not None and given != value and given != defaults.get(key):  # a default was not typed
            logger.info("using the checkpoint's %s=%s (the command line had %s)", key, value, given)
    return spec


def model_from_checkpoint(path: str | Path, cfg: argparse.Namespace, fallback_class_names: Sequence[str],
                          ckpt: dict[str, Any] | None = None) -> tuple[nn.Module, ModelSpec]:
    """Build the model a checkpoint was trained as and load its weights (``ckpt``: the checkpoint already
    read from ``path``, else it is read here, once).

    Returns the model and its spec (the checkpoint's own values win over the command line, so inference
    applies the preprocessing the model was trained with). A bare state dict carries none: ``--arch``,
    the preprocessing flags and ``fallback_class_names`` (the data's) are used instead. With ``--use_test_size``
    the spec is the one at the weights' test size (:func:`evaluation_spec`).
    """
    ckpt = load_checkpoint(path) if ckpt is None else ckpt
    spec = checkpoint_spec(ckpt, cfg, fallback_class_names)
    if getattr(cfg, "multi_label", False) and not spec.multi_label:  # a multi-label one sets it itself (config.saved)
        raise ValueError(f"--multi_label: {path} is a single-label model (one class per image), so its outputs are "
                         f"no label sets; drop --multi_label")
    spec = evaluation_spec(spec, getattr(cfg, "use_test_size", False), path)
    model = create_model(spec.arch, spec.num_classes, in_chans=spec.in_chans)
    load_state_dict_checked(model, extract_state_dict(ckpt), path)
    return model, spec


# What an ensemble's members must share with the first checkpoint: the same outputs, read the same way, from
# the same preprocessed images.
MEMBER_FIELDS = ("class_names", "multi_label", "head", "image_size", "in_chans", "mean", "std", "eval_resize",
                 "crop_pct", "interpolation", "bit_depth")


def ensemble_members(cfg: argparse.Namespace, spec: ModelSpec,
                     device: torch.device) -> list[tuple[nn.Module, ModelSpec]]:
    """The models (with their specs) of ``--resume``'s further checkpoints (``cfg.ensemble``) on ``device``, in
    eval mode; a checkpoint whose classes, task, head or preprocessing differ from ``spec`` (the first's) is
    refused. Their ``--calibrate`` temperatures may differ: each model's own is applied before averaging."""
    members = []
    for path in getattr(cfg, "ensemble", None) or []:
        model, other = model_from_checkpoint(path, cfg, fallback_class_names=list(spec.class_names))
        for field in MEMBER_FIELDS:
            if getattr(other, field) != getattr(spec, field):
                raise ValueError(f"--resume: {path} has {field} {str(getattr(other, field))[:80]}, but {cfg.resume} "
                                 f"has {str(getattr(spec, field))[:80]}; an ensemble averages checkpoints of the "
                                 f"same classes, task and preprocessing")
        members.append((model.to(device).eval(), other))
    return members


def tta_args(cfg: argparse.Namespace) -> tuple[str | None, tuple[float, ...]]:
    """``--tta``'s mode (None without it) and its scale factors."""
    tta = getattr(cfg, "tta", None) or [None]
    return tta[0], tuple(float(s) for s in tta[1:])


def averaged_model(cfg: argparse.Namespace, model: nn.Module, spec: ModelSpec,
                   members: Sequence[tuple[nn.Module, ModelSpec]] = ()) -> nn.Module:
    """The model an inference mode runs: ``model`` itself, or with ``--tta`` or an ensemble (``members``: the
    further checkpoints) the average of their probabilities over the views (models.tta.ProbabilityAverage),
    each model's at its own ``--calibrate`` temperature. The average comes back as logits at ``spec``'s
    temperature, so that what divides by it (the modes, the export metadata, the demo) gets the average."""
    mode, scales = tta_args(cfg)
    if mode is None and not members:
        return model
    head = "bce" if spec.multi_label else spec.head
    return ProbabilityAverage([model, *(m for m, _ in members)], head=head, tta=mode, scales=scales,
                              temperatures=[spec.temperature, *(s.temperature for _, s in members)],
                              output_temperature=spec.temperature).eval()


def check_reject_below(reject_below: float | None, spec: ModelSpec, checkpoint: str | Path) -> None:
    """``--reject_below`` is for single-label models: a multi-label one already answers an empty label set when
    no class reaches its threshold (its own "unknown")."""
    if reject_below is not None and spec.multi_label:
        raise ValueError(f"--reject_below: {checkpoint} is a multi-label model, which answers an empty label set "
                         f"when no class reaches its decision threshold; drop --reject_below (or raise the "
                         f"thresholds with --tune_thresholds)")


@dataclass
class Restored:
    """A checkpoint ready for inference: the model on its device, in eval mode, and what it is (its spec)."""
    model: nn.Module
    spec: ModelSpec
    device: torch.device

    @property
    def class_names(self) -> list[str]:
        return list(self.spec.class_names)


def restore_for_inference(cfg: argparse.Namespace, device: torch.device | None = None) -> Restored:
    """Load ``--resume`` for inference on ``--data``, whose classes must be the model's, onto ``device``
    (default: ``--device``'s)."""
    from utils.misc import resolve_device
    device = device or resolve_device(cfg.device)
    data_classes = data_class_names(cfg)
    adopt_run_split(cfg, cfg.resume, data_classes)
    model, spec = model_from_checkpoint(cfg.resume, cfg, fallback_class_names=data_classes)
    if data_classes != list(spec.class_names):
        raise ValueError(f"{cfg.data} has classes {data_classes[:10]} but {cfg.resume} was trained on "
                         f"{list(spec.class_names)[:10]}; use data with the model's classes")
    return Restored(model.to(device).eval(), spec, device)


def _split_loader(cfg: argparse.Namespace, restored: Restored, split: str,
                  fallback: bool) -> tuple[ClassificationDataset, torch.utils.data.DataLoader, dict[str, Any]]:
    """``split``'s dataset (evaluation transform), its loader and the restored model's preprocessing and
    precision, as :func:`predict_split` and :func:`embed_split` run it."""
    dataset = build_dataset(cfg, split, restored.class_names, train=False, fallback=fallback, spec=restored.spec)
    loader = build_loader(cfg, dataset, train=False, device=restored.device)
    return dataset, loader, {"preprocess": preprocessor(restored.spec, restored.device),
                             "dtype": amp_dtype(cfg.amp, cfg.amp_dtype, restored.device)}


def predict_split(cfg: argparse.Namespace, restored: Restored, split: str, *, fallback: bool = False,
                  progress: bool = False) -> tuple[ClassificationDataset, dict[str, Any]]:
    """Run the restored model over ``split``: the dataset and ``evaluate``'s outputs (logits in dataset order)."""
    dataset, loader, run = _split_loader(cfg, restored, split, fallback)
    result = evaluate(restored.model, loader, progress=progress, return_outputs=True,
                      desc=f"predict {dataset.split}", **run)
    return dataset, result


def embed_split(cfg: argparse.Namespace, restored: Restored, split: str, *, fallback: bool = False,
                progress: bool = False) -> tuple[ClassificationDataset, dict[str, Any]]:
    """The restored model over ``split`` (evaluation transform): the dataset and ``engine.features.embed``'s
    result (each image's embedding, logits, targets and dataset indices, in loader order)."""
    dataset, loader, run = _split_loader(cfg, restored, split, fallback)
    result = embed(restored.model, loader, len(restored.class_names), multi_label=restored.spec.multi_label,
                   progress=progress, desc=f"features {dataset.split}", **run)
    return dataset, result
