"""The shared flag groups that every mode reads (data, data loading, model, numerics, run), their value types
and the constants they default to."""
from __future__ import annotations

import argparse
import math
import os
import re
from pathlib import Path
from typing import Sequence

from config.base import FlagGroup, need

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DATA = REPO_ROOT / "data" / "digits"
CSV_LABEL = "label"  # a csv table's label column when --label_col is not given (as dataloader.datasets.CSV_LABEL)

# Largest --image_size side: a network input far beyond any classification model's (224-800 px), still
# allocatable; 100000 x 100000 would be a 120 GB tensor per image, which the kernel may kill, not refuse.
MAX_IMAGE_SIDE = 4096
# Pillow's default ``Image.MAX_IMAGE_PIXELS`` (1 GiB / 4 bytes / 3), kept here so that this module does not
# import Pillow; tests/unit/test_bombs.py checks that it equals dataloader.io.DEFAULT_MAX_IMAGE_PIXELS.
DEFAULT_MAX_IMAGE_PIXELS = 89_478_485

DATASET_ALIASES = {"folder": "folder", "imagenet": "folder", "txt": "txt", "read_from_txt": "txt", "zip": "zip",
                   "csv": "csv", "jsonl": "csv", "wds": "wds", "webdataset": "wds", "hf": "hf", "huggingface": "hf",
                   "parquet": "hf"}

# ImageNet's normalisation, the default --mean/--std (their average for --in_chans 1)
RGB_MEAN, RGB_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
# Preprocessing keys that named --pretrained weights supply unless set (see defer_preprocessing).
PREPROCESSING_KEYS = ("mean", "std", "interpolation", "eval_resize", "crop_pct")
# ... and that a package (--pretrained hf-hub:REPO / local-dir:DIR) supplies too: its model's input size
PACKAGE_KEYS = PREPROCESSING_KEYS + ("image_size",)
# Modes that build a model from --pretrained (and so may take named weights and their preprocessing).
PRETRAINED_MODES = ("train", "lr_finder")


def _dataset_kind(value: str) -> str:
    key = str(value).lower()
    if key not in DATASET_ALIASES:
        raise argparse.ArgumentTypeError(
            f"invalid dataset kind {value!r} (choose from folder, txt, zip, csv, wds, hf; aliases: imagenet, "
            f"read_from_txt, jsonl, webdataset, huggingface, parquet)")
    return DATASET_ALIASES[key]


def finite_float(value: str) -> float:
    """The type of every float flag: a number, never ``inf``, ``nan`` or one that overflows (``1e400``)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(f"invalid number {value!r}") from None
    if not math.isfinite(number):
        raise argparse.ArgumentTypeError(f"{value!r} is not a finite number")
    return number


def available_cores() -> int:
    """CPU cores this process may use (its affinity mask, so containers and taskset are respected)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def _workers(value: str) -> int:
    if str(value).lower() == "auto":
        return available_cores()
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid worker count {value!r}: expected an integer >= 0 or auto") from None
    if n < 0:
        raise argparse.ArgumentTypeError(f"invalid worker count {value!r}: expected an integer >= 0")
    return n


# ---- the shared groups: every mode reads them ----

def _add_data(g: argparse._ArgumentGroup) -> None:
    g.add_argument("--data", type=str, default=str(DEFAULT_DATA),
                   help="dataset root; --dataset wds: also a URL base or a brace pattern of shards; --dataset hf: "
                        "also a cached Hub name (default: data/digits in the repository, the bundled digits; modes "
                        "that run --resume: the data the checkpoint was trained on)")
    g.add_argument("--dataset", type=_dataset_kind, default="folder",
                   help="dataset layout: folder (alias imagenet), txt (alias read_from_txt), zip, csv (alias "
                        "jsonl: DATA/{train,val,test}.csv or .jsonl, or DATA/labels.csv with a split column), wds "
                        "(alias webdataset: tar shards with _info.json; --data may be an http(s)/fsspec URL), or hf "
                        "(aliases huggingface, parquet: a Hugging Face save_to_disk folder, "
                        "DATA/data/<split>-*.parquet files, or a Hub dataset name already in the datasets cache)")
    g.add_argument("--zip", dest="dataset", action="store_const", const="zip",
                   help="shortcut for --dataset zip")
    g.add_argument("--path_col", type=str, default="path",
                   help="--dataset csv: the column (JSONL: key) holding each image's path")
    g.add_argument("--label_col", type=str, default=None,
                   help="--dataset csv: the column (JSONL: key) holding each image's label (a class name; default: "
                        "label); --dataset hf: the label column (default: label, else labels; a name given is "
                        "used as is)")
    g.add_argument("--image_col", type=str, default=None,
                   help="--dataset hf: the column holding the images (default: image, else img)")
    g.add_argument("--label_delim", type=str, default=None,
                   help="--multi_label: what separates the labels of one image in a label field (default: any "
                        "run of spaces and commas)")
    g.add_argument("--allow_empty_labels", action="store_true",
                   help="--multi_label: an image with no label is all negative (default: an error naming it)")
    g.add_argument("-b", "--batch_size", type=int, default=64, help="batch size per device")
    g.add_argument("--val_fraction", type=finite_float, default=0.0,
                   help="carve a val split out of train: this fraction of each class (round(F * n) images), "
                        "for data that has only a train split; saved in the run folder as split.json")
    g.add_argument("--test_fraction", type=finite_float, default=0.0,
                   help="carve a test split out of train, as --val_fraction")
    g.add_argument("--split_seed", type=int, default=0,
                   help="seed of the --val_fraction/--test_fraction split (independent of --seed)")


def _check_data(cfg: argparse.Namespace) -> None:
    need(cfg.batch_size >= 1, f"-b/--batch_size must be >= 1, got {cfg.batch_size}")
    for flag in ("path_col", "label_col", "image_col"):
        value = getattr(cfg, flag, None)
        need(value is None or value.strip() != "", f"--{flag} must name a column, got {value!r}")
    # label_col "label": the default before it became None (not given), in the config.yaml of older runs
    for flag, defaults, kinds in (("path_col", ("path",), ("csv",)), ("label_col", (None, CSV_LABEL), ("csv", "hf")),
                                  ("image_col", (None,), ("hf",))):
        need(cfg.dataset in kinds or getattr(cfg, flag, None) in defaults,
             f"--{flag} names a column of a --dataset {' or '.join(kinds)} dataset, but --dataset is {cfg.dataset}: "
             f"drop it, or pass --dataset {kinds[0]}")
    need(cfg.path_col != (cfg.label_col or CSV_LABEL),
         f"--path_col and --label_col must name two columns, both are {cfg.path_col!r}")
    for flag in ("val_fraction", "test_fraction"):
        need(0 <= getattr(cfg, flag) < 1, f"--{flag} must be in [0, 1), got {getattr(cfg, flag)}")
    check_label_sets(cfg)
    need(cfg.val_fraction + cfg.test_fraction < 1,
         f"--val_fraction {cfg.val_fraction} + --test_fraction {cfg.test_fraction} must be below 1 "
         f"(train keeps the rest)")


def check_label_sets(cfg: argparse.Namespace) -> None:
    """The multi-label data flags: only with --multi_label, and a layout that can hold label sets."""
    for flag in ("label_delim", "allow_empty_labels"):
        need(cfg.multi_label or not getattr(cfg, flag), f"--{flag} reads the label sets of --multi_label data: "
                                                         f"add --multi_label, or drop --{flag}")
    need(cfg.label_delim != "", "--label_delim must be a separator such as ';' or '|', not empty")
    need(not (cfg.multi_label and cfg.dataset == "folder"),
         "--multi_label with --dataset folder: a class folder gives each image exactly one class; write the label "
         "sets as a csv/jsonl table (path,label with \"cat dog\"), a txt list ('path 1,4'), a hf dataset or shards")


def _add_loading(g: argparse._ArgumentGroup) -> None:
    g.add_argument("-j", "--workers", type=_workers, default=2,
                   help="data-loading worker processes, or auto (the available cores)")
    g.add_argument("--cache_dataset", choices=["none", "memory"], default="none",
                   help="memory: decode the dataset once into one uint8 tensor (on the GPU under CUDA) and "
                        "augment whole batches; for small sets such as the digits or CIFAR")
    g.add_argument("--cache_max_gb", type=float, default=4.0,
                   help="refuse --cache_dataset memory when a decoded split would exceed this many GB")
    g.add_argument("--gpu_decode", action="store_true",
                   help="CUDA only: workers read the files, JPEG batches are decoded on the GPU (nvjpeg)")
    g.add_argument("--skip_bad_images", action="store_true",
                   help="skip images that fail to decode (counted per epoch) instead of stopping with an error")
    g.add_argument("--max_image_pixels", type=int, default=DEFAULT_MAX_IMAGE_PIXELS,
                   help="refuse images of more pixels, from their header before decoding (decompression bombs), "
                        "and zip members over 4 bytes per pixel + 16 MiB; 0 = no limit (default: Pillow's)")


def _check_loading(cfg: argparse.Namespace) -> None:
    need(not (cfg.gpu_decode and cfg.cache_dataset != "none"),
         "--gpu_decode and --cache_dataset memory exclude each other: the cache decodes once, up front")
    need(not cfg.gpu_decode or cfg.device is None or cfg.device.startswith("cuda"),
         f"--gpu_decode decodes with nvjpeg on a CUDA device, but --device is {cfg.device}")
    need(cfg.max_image_pixels >= 0, f"--max_image_pixels must be >= 0 (0 = no limit), got {cfg.max_image_pixels}")
    need(cfg.cache_max_gb > 0, f"--cache_max_gb must be > 0, got {cfg.cache_max_gb}")


def _add_model(g: argparse._ArgumentGroup) -> None:
    g.add_argument("--arch", type=str, default="resnet18",
                   help="model name: a torchvision name, efficientnet-b0..b7, resnest50..269, or timm/<name>")
    g.add_argument("--num_classes", type=int, default=None,
                   help="number of classes; inferred from the data when not given, an error when it disagrees")
    g.add_argument("--image_size", type=int, nargs=2, default=[224, 224], metavar=("H", "W"),
                   help="network input size")
    g.add_argument("--eval_resize", choices=["letterbox", "center_crop"], default="letterbox",
                   help="evaluation geometry: letterbox, or resize the short side to size/crop_pct and centre-crop "
                        "(unless set: named --pretrained weights' own)")
    g.add_argument("--crop_pct", type=float, default=0.875,
                   help="centre-crop fraction for --eval_resize center_crop (unless set: named --pretrained "
                        "weights' own)")
    g.add_argument("--interpolation", choices=["bilinear", "bicubic"], default="bilinear",
                   help="resampling of every resize (antialiased): training, evaluation, exports and the demo "
                        "(unless set: named --pretrained weights' own)")
    g.add_argument("--in_chans", type=int, choices=[1, 3], default=3,
                   help="input channels: 3 (RGB; grey images are tripled) or 1 (grey; colour images become their "
                        "luma); the model's stem is built for it and it travels in the model's spec")
    g.add_argument("--bit_depth", type=int, choices=[8, 16], default=8,
                   help="bits per value read from images: 8 (16-bit PNG/TIFF rounded to 8 bits) or 16 (kept at full "
                        "range, 0..65535; 8-bit images are scaled by 257); travels in the model's spec")
    g.add_argument("--mean", type=float, nargs="+", default=list(RGB_MEAN),
                   help="normalisation mean, one value per channel (default: ImageNet's RGB; with --in_chans 1 their "
                        "average; unless set: named --pretrained weights' own)")
    g.add_argument("--std", type=float, nargs="+", default=list(RGB_STD),
                   help="normalisation std, one value per channel (default: ImageNet's RGB; with --in_chans 1 their "
                        "average; unless set: named --pretrained weights' own)")
    g.add_argument("--multi_label", action="store_true",
                   help="multi-label task: each image has a set of labels (csv/jsonl \"cat dog\" or a JSON list, "
                        "txt/zip 'path 1,4', hf Sequence(ClassLabel), wds .cls '1,4' or .json labels); multi-hot "
                        "targets, sigmoid outputs, BCE by default, mAP as the metric (docs/multilabel.md)")
    g.add_argument("--criterion", choices=["softmax", "bce", "asl"], default=None,
                   help="softmax cross-entropy, sigmoid binary cross-entropy over one-vs-all targets, or the "
                        "asymmetric loss of multi-label training (Ridnik et al. 2021; --multi_label only) "
                        "(default: softmax; with --multi_label bce)")


def default_criterion(multi_label: bool) -> str:
    """The loss of a task when --criterion is not given: softmax, or bce for --multi_label."""
    return "bce" if multi_label else "softmax"


def _check_model(cfg: argparse.Namespace) -> None:
    if cfg.criterion is None:  # not given: the task's own
        cfg.criterion = default_criterion(getattr(cfg, "multi_label", False))
    need(not (getattr(cfg, "multi_label", False) and cfg.criterion == "softmax"),
         "--multi_label with --criterion softmax: a softmax gives one class per image; use --criterion bce "
         "(the default with --multi_label) or asl")
    need(getattr(cfg, "multi_label", False) or cfg.criterion != "asl",
         "--criterion asl is the asymmetric loss of multi-label training: add --multi_label, or use softmax/bce")
    need(all(8 <= s <= MAX_IMAGE_SIDE for s in cfg.image_size),
         f"--image_size must be two integers in 8..{MAX_IMAGE_SIDE}, got {cfg.image_size} (one float input of "
         f"{MAX_IMAGE_SIDE}x{MAX_IMAGE_SIDE} already takes 200 MB, before activations)")
    need(cfg.num_classes is None or cfg.num_classes >= 1, f"--num_classes must be >= 1, got {cfg.num_classes}")
    need(0 < cfg.crop_pct <= 1, f"--crop_pct must be in (0, 1], got {cfg.crop_pct}")
    need(all(s > 0 for s in cfg.std), f"--std must be positive, got {cfg.std}")
    for key, default in (("mean", RGB_MEAN), ("std", RGB_STD)):
        if cfg.in_chans != 3 and list(getattr(cfg, key)) == list(default):  # the RGB default, not typed: the grey one
            setattr(cfg, key, channel_values(default, cfg.in_chans))
        need(len(getattr(cfg, key)) == cfg.in_chans, f"--{key} needs {cfg.in_chans} value(s), one per channel of "
                                                     f"--in_chans {cfg.in_chans}, got {getattr(cfg, key)}")
    need(not (cfg.bit_depth == 16 and cfg.interpolation == "bicubic"),
         "--interpolation bicubic with --bit_depth 16: bicubic overshoots and torchvision does not clamp 16-bit "
         "resizes (values would wrap); use --interpolation bilinear")
    need(not (getattr(cfg, "gpu_decode", False) and (cfg.in_chans, cfg.bit_depth) != (3, 8)),
         "--gpu_decode decodes 8-bit RGB JPEGs; with --in_chans 1 or --bit_depth 16 drop it (the CPU workers decode)")


def channel_values(values: Sequence[float], in_chans: int) -> list[float]:
    """Per-channel RGB values (mean or std) for ``in_chans`` channels: as they are for 3, their average for 1."""
    values = [float(v) for v in values]
    return values if in_chans == len(values) else [round(sum(values) / len(values), 6)] * in_chans


def _add_numerics(g: argparse._ArgumentGroup) -> None:
    g.add_argument("--seed", type=int, default=0, help="random seed: the same seed repeats a CPU run exactly")
    g.add_argument("--amp", action="store_true",
                   help="mixed precision (bf16 where supported, else fp16 with a gradient scaler)")
    g.add_argument("--amp_dtype", choices=["auto", "bf16", "fp16"], default="auto", help="mixed-precision dtype")


class _Checkpoints(argparse.Action):
    """``--resume CKPT [CKPT ...]``: the first is ``resume``; the others (an ensemble with ``--evaluation`` and
    ``--predict``) are ``ensemble``, which the hidden ``--ensemble`` also sets, so that the config round-trips."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Sequence[str],
                 option_string: str | None = None) -> None:
        namespace.resume = values[0]
        namespace.ensemble = list(values[1:]) or None


def _add_run(g: argparse._ArgumentGroup) -> None:
    g.add_argument("--resume", nargs="+", action=_Checkpoints, default=None, metavar="CKPT",
                   help="checkpoint to resume training from, or to run with --evaluation, --predict, ...; "
                        "--evaluation and --predict take several of the same classes (an ensemble: their "
                        "probabilities averaged)")
    g.add_argument("--ensemble", nargs="+", default=None, help=argparse.SUPPRESS)
    g.add_argument("--overwrite", action="store_true",
                   help="start afresh in an existing run directory instead of resuming from its last.pth")
    g.add_argument("--output", type=str, default="output", help="root of run directories")
    g.add_argument("--tag", type=str, default="default", help="run name: the run directory is <output>/<arch>/<tag>")
    g.add_argument("--device", type=str, default=None, help="cpu, cuda or cuda:N (default: CUDA when present)")
    g.add_argument("--no_progress", action="store_true", help="no tqdm progress bars")
    g.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)


def _check_run(cfg: argparse.Namespace) -> None:
    need(not cfg.ensemble or getattr(cfg, "evaluation", False) or getattr(cfg, "predict", None) is not None,
         f"--resume takes several checkpoints (an ensemble) only with --evaluation or --predict, got "
         f"{1 + len(cfg.ensemble or [])}: give one")
    need(bool(re.fullmatch(r"[A-Za-z0-9_.\-]+", cfg.tag)) and cfg.tag.strip(".") != "",
         f"--tag may hold letters, digits, '_', '.' and '-' only, and not be '.' or '..' (it names the run "
         f"folder <output>/<arch>/<tag>), got {cfg.tag!r}")
    if cfg.device is not None:
        need(bool(re.fullmatch(r"cpu|cuda(:\d+)?", cfg.device)),
             f"--device must be cpu, cuda or cuda:N, got {cfg.device!r}")


def _resume_file(cfg: argparse.Namespace, given: set[str]) -> None:
    for path in [cfg.resume, *(cfg.ensemble or [])]:
        need(path is None or Path(path).is_file(), f"--resume: file {path!r} does not exist")


# Identity groups (not resume-safe): what is trained, on what. The others say how a run is carried out.
DATA = FlagGroup("data", _add_data, _check_data)
LOADING = FlagGroup("data loading", _add_loading, _check_loading, resume_safe=True)
MODEL = FlagGroup("model", _add_model, _check_model)
NUMERICS = FlagGroup("numerics", _add_numerics)
RUN = FlagGroup("run", _add_run, _check_run, _resume_file, resume_safe=True)
SHARED_GROUPS = (DATA, LOADING, MODEL, NUMERICS, RUN)
