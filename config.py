"""Every flag of ``main.py``, its default and help; YAML defaults; validation with clear errors.

Flags and an optional ``--config file.yaml`` become one resolved config (an ``argparse.Namespace``):
the YAML keys set the parser's defaults, so flags given on the command line still win. Every value,
whether it came from the command line or the YAML file, goes through the same type conversion and
choice checks, and the resolved config is saved as ``config.yaml`` in the run directory.

This module must stay light: it imports neither torch models nor data code.
"""
from __future__ import annotations

import argparse
import difflib
import logging
import math
import os
import re
from pathlib import Path
from typing import Any, Sequence

import yaml

from utils.weights_name import is_weights_name

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parent
DEFAULT_DATA = REPO_ROOT / "data" / "digits"

# Mode flags: the dest of each boolean flag and the application module that runs it.
MODES: dict[str, str] = {
    "train": "applications.train",
    "evaluation": "applications.test",
    "knowledge": "applications.knowledge",
    "make_curriculum": "applications.curriculum",
    "lr_finder": "applications.lr_finder",
    "jit": "applications.convert",
    "onnx": "applications.convert",
    "predict": "applications.predict",
    "visual_data": "applications.visualize",
    "visual_source": "applications.visualize",
    "flops": "applications.benchmark",
    "throughput": "applications.benchmark",
    "summary": "applications.benchmark",
    "publish": "applications.benchmark",
    "compare": "applications.compare",
    "sweep": "applications.sweep",
}
# Modes that run a trained checkpoint and so need --resume.
CHECKPOINT_MODES = ("evaluation", "knowledge", "make_curriculum", "jit", "onnx", "predict", "visual_data",
                    "visual_source")

# Flags that only training reads (found by what the other modes read): given on the command line with
# a mode that ignores them, they are refused (``check_mode_flags``) rather than silently dropped. The LR
# range test trains too and reads most of them; --throughput measures its --channels_last and --compile
# variants. YAML keys are not refused: the config.yaml of a training run passed to --evaluation is fine.
_LR_FINDER_READS = frozenset({
    "train_resize", "rrc_scale", "hflip", "pretrained", "optimizer", "momentum", "nesterov", "weight_decay",
    "lookahead", "lookahead_alpha", "lookahead_k", "label_smoothing", "accumulation_steps", "aug", "aug_policy",
    "autoaugment_policy", "randaugment_n", "randaugment_m", "custom_hflip", "custom_vflip", "custom_rotate",
    "custom_crop", "custom_blur", "custom_noise", "custom_jitter", "random_erasing", "mixup", "mixup_prob", "cutmix",
    "mix_switch_prob", "multi_scale", "class_balanced", "weighted_loss", "class_weights", "cost_matrix", "ghm_loss",
    "ghm_bins", "ghm_momentum", "ohm_loss", "ohm_ratio", "threshold_loss", "threshold_low", "threshold_high",
    "focal_loss", "focal_gamma", "channels_last", "head_lr_mult", "layer_decay", "drop_rate", "drop_path_rate",
})
TRAINING_ONLY_FLAGS = _LR_FINDER_READS | frozenset({
    "epochs", "lr", "scheduler", "lr_steps", "lr_ratios", "poly_power", "onecycle_pct", "warmup", "ema", "ema_decay",
    "clip_grad", "distill", "distill_files", "distill_alpha", "distill_temperature", "distill_missing",
    "curriculum_learning", "curriculum_missing_weight", "sync_bn", "lr_scale", "lr_base_batch", "use_checkpoint",
    "compile", "freeze_backbone", "unfreeze_epoch", "precise_bn",
})
# The training-only flags that another mode reads as well.
TRAINING_FLAGS_ALSO_READ_BY = {"lr_finder": _LR_FINDER_READS, "throughput": frozenset({"channels_last", "compile"})}

# Largest --image_size side: a network input far beyond any classification model's (224-800 px), still
# allocatable; 100000 x 100000 would be a 120 GB tensor per image, which the kernel may kill, not refuse.
MAX_IMAGE_SIDE = 4096
# Pillow's default ``Image.MAX_IMAGE_PIXELS`` (1 GiB / 4 bytes / 3), kept here so that this module does not
# import Pillow; tests/test_bombs.py checks that it equals dataloader.io.DEFAULT_MAX_IMAGE_PIXELS.
DEFAULT_MAX_IMAGE_PIXELS = 89_478_485

DATASET_ALIASES = {"folder": "folder", "imagenet": "folder", "txt": "txt", "read_from_txt": "txt", "zip": "zip"}

# Keys that may differ when a run is resumed in the same run directory (they do not change what is
# trained): anything else that differs from the saved config.yaml is refused (see ``config_conflicts``).
RESUME_SAFE_KEYS = frozenset({
    "config", "train", "evaluation", "tag", "workers", "device", "epochs", "resume", "overwrite", "no_progress",
    "eval_split", "out", "log_interval", "output", "channels_last", "compile", "topk", "class_indices", "visualize",
    "save_log", "visual_method", "visual_class", "visual_limit", "target_layer", "opset", "skip_bad_images",
    "local_rank", "use_checkpoint", "cache_dataset", "cache_max_gb", "gpu_decode", "max_image_pixels",
    "compare", "sort_by", "sweep", "sweep_devices", "trials", "study_storage", "tracker",
})
# Not resume-safe on purpose: pretrained, freeze_backbone, unfreeze_epoch, head_lr_mult, layer_decay, drop_rate,
# drop_path_rate and precise_bn change what is trained (the frozen/unfrozen state follows from the epoch).

# Preprocessing keys that named --pretrained weights supply unless set (see defer_preprocessing).
PREPROCESSING_KEYS = ("mean", "std", "interpolation", "eval_resize", "crop_pct")
# Modes that build a model from --pretrained (and so may take named weights and their preprocessing).
PRETRAINED_MODES = ("train", "lr_finder")


# --sort_by: the comparison columns a table can be sorted by, and whether larger is better.
SORT_KEYS: dict[str, bool] = {"best_val_top1": True, "test_top1": True, "test_top5": True, "img_per_s": True,
                              "train_min": False, "epochs_done": True}


class ConfigError(ValueError):
    """A flag or config value is invalid; the message names the flag, the value and what is allowed."""


def _dataset_kind(value: str) -> str:
    key = str(value).lower()
    if key not in DATASET_ALIASES:
        raise argparse.ArgumentTypeError(
            f"invalid dataset kind {value!r} (choose from folder, txt, zip; aliases: imagenet, read_from_txt)")
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


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every flag of every mode, grouped for ``--help``."""
    p = argparse.ArgumentParser(
        prog="main.py",
        description="Image-classification playground: train, evaluate and more, from one entry point.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--config", type=str, default=None,
                   help="YAML file whose keys set the defaults of these flags (command-line flags still win)")

    g = p.add_argument_group("mode (pick one)")
    g.add_argument("--train", action="store_true", help="train a model, then evaluate best.pth on the test split")
    g.add_argument("--evaluation", action="store_true",
                   help="evaluate a checkpoint (--resume) on --eval_split: metrics, confusion matrix, predictions")
    g.add_argument("--knowledge", choices=["train", "val", "test"], default=None,
                   help="run the teacher --resume over this split and write DATA/distill_<arch>.txt and DATA/label.txt")
    g.add_argument("--make_curriculum", action="store_true",
                   help="score the training images with --resume and write DATA/curriculum.txt (path,weight)")
    g.add_argument("--lr_finder", action="store_true",
                   help="LR range test: a short sweep with an exponentially growing LR; saves lr_finder.png")
    g.add_argument("--jit", action="store_true",
                   help="export --resume as TorchScript to <run_dir>/export/model_jit.pt, verified against eager")
    g.add_argument("--onnx", action="store_true",
                   help="export --resume as ONNX to <run_dir>/export/model.onnx, verified in ONNX Runtime")
    g.add_argument("--predict", type=str, default=None, metavar="SOURCE",
                   help="classify an image, a folder (recursive) or a txt list with --resume; writes predictions.csv")
    g.add_argument("--visual_data", choices=["train", "val", "test"], default=None,
                   help="explain --resume's predictions on this split with --visual_method heatmaps")
    g.add_argument("--visual_source", type=str, default=None, metavar="PATH",
                   help="like --visual_data, for an image or a folder of images")
    g.add_argument("--flops", action="store_true", help="parameters and FLOPs of --arch at --image_size, per module")
    g.add_argument("--throughput", action="store_true",
                   help="inference and training images/s at -b on the current device (eager, channels_last, compile, amp)")
    g.add_argument("--summary", action="store_true", help="layer table: name, type, output shape, parameters")
    g.add_argument("--publish", type=str, nargs=2, default=None, metavar=("CKPT", "OUT"),
                   help="strip training state from CKPT and write OUT-<sha256[:8]>.pth")
    g.add_argument("--compare", type=str, nargs="+", default=None, metavar="RUN",
                   help="compare run directories (folders searched for runs; globs allowed): prints the table and "
                        "writes compare.md, compare.csv and compare.png")
    g.add_argument("--sweep", type=str, default=None, metavar="FILE",
                   help="run the grid, the named variants or the Optuna search of a sweep YAML file, one run "
                        "directory per variant, then compare them")

    g = p.add_argument_group("data")
    g.add_argument("--data", type=str, default=str(DEFAULT_DATA), help="dataset root")
    g.add_argument("--dataset", type=_dataset_kind, default="folder",
                   help="dataset layout: folder (alias imagenet), txt (alias read_from_txt) or zip")
    g.add_argument("--zip", dest="dataset", action="store_const", const="zip",
                   help="shortcut for --dataset zip")
    g.add_argument("--num_classes", type=int, default=None,
                   help="number of classes; inferred from the data when not given, an error when it disagrees")
    g.add_argument("--image_size", type=int, nargs=2, default=[224, 224], metavar=("H", "W"),
                   help="network input size")
    g.add_argument("--train_resize", choices=["letterbox", "rrc"], default="letterbox",
                   help="training geometry: letterbox (keep aspect, pad) or rrc (RandomResizedCrop)")
    g.add_argument("--rrc_scale", type=float, nargs=2, default=[0.08, 1.0], metavar=("MIN", "MAX"),
                   help="area range of RandomResizedCrop (with --train_resize rrc)")
    g.add_argument("--hflip", type=float, default=0.0, help="horizontal flip probability for training images")
    g.add_argument("--eval_resize", choices=["letterbox", "center_crop"], default="letterbox",
                   help="evaluation geometry: letterbox, or resize the short side to size/crop_pct and centre-crop "
                        "(unless set: named --pretrained weights' own)")
    g.add_argument("--crop_pct", type=float, default=0.875,
                   help="centre-crop fraction for --eval_resize center_crop (unless set: named --pretrained "
                        "weights' own)")
    g.add_argument("--interpolation", choices=["bilinear", "bicubic"], default="bilinear",
                   help="resampling of every resize (antialiased): training, evaluation, exports and the demo "
                        "(unless set: named --pretrained weights' own)")
    g.add_argument("--mean", type=float, nargs=3, default=[0.485, 0.456, 0.406],
                   help="normalisation mean (RGB) (unless set: named --pretrained weights' own)")
    g.add_argument("--std", type=float, nargs=3, default=[0.229, 0.224, 0.225],
                   help="normalisation std (RGB) (unless set: named --pretrained weights' own)")
    g.add_argument("-b", "--batch_size", type=int, default=64, help="batch size per device")
    g.add_argument("-j", "--workers", type=_workers, default=2, help="data-loading worker processes, or auto (the available cores)")
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

    g = p.add_argument_group("model")
    g.add_argument("--arch", type=str, default="resnet18",
                   help="model name: a torchvision name, efficientnet-b0..b7, resnest50..269, or timm/<name>")
    g.add_argument("--pretrained", type=str, default=None,
                   help="a local weights file (torchvision, timm or our checkpoint; a head of another size is "
                        "skipped), or weights by name with a new head: imagenet (the family's default ImageNet "
                        "weights), a torchvision weights name (IMAGENET1K_V2) or a timm tag (a1_in1k), fetched by "
                        "the library into its cache (TORCH_HOME, the Hugging Face cache for timm); their "
                        "preprocessing becomes the default")
    g.add_argument("--drop_rate", type=float, default=None,
                   help="dropout before the classifier (timm drop_rate, torchvision dropout, efficientnet-pytorch "
                        "dropout_rate, resnest final_drop); default: the model's own")
    g.add_argument("--drop_path_rate", type=float, default=None,
                   help="stochastic depth (timm drop_path_rate, torchvision stochastic_depth_prob, "
                        "efficientnet-pytorch drop_connect_rate); default: the model's own")

    g = p.add_argument_group("fine-tuning")
    g.add_argument("--freeze_backbone", action="store_true",
                   help="train only the classifier head; the backbone's weights and batch-norm statistics stay "
                        "fixed (its batch norms in eval mode) until --unfreeze_epoch")
    g.add_argument("--unfreeze_epoch", type=int, default=None, metavar="N",
                   help="with --freeze_backbone: train every layer from epoch N on (0-based: 1 = after one "
                        "frozen epoch); default: frozen for the whole run")
    g.add_argument("--head_lr_mult", type=float, default=1.0, metavar="M",
                   help="the classifier head's LR is M x the LR (e.g. 10 with pretrained weights)")
    g.add_argument("--layer_decay", type=float, default=None, metavar="D",
                   help="layer-wise LR decay as timm's: a layer k below the head trains at D**k x the LR")
    g.add_argument("--precise_bn", type=int, default=0, metavar="N",
                   help="recompute batch-norm running statistics over N training batches before each "
                        "evaluation and the checkpoint save (0 = off)")

    g = p.add_argument_group("optimisation")
    g.add_argument("--epochs", type=int, default=30, help="number of training epochs")
    g.add_argument("--optimizer", choices=["sgd", "adam", "adamw", "radam", "nadam", "lamb", "ranger"], default="sgd",
                   help="optimizer (ranger = RAdam inside Lookahead)")
    g.add_argument("--lr", type=float, default=0.1, help="peak learning rate")
    g.add_argument("--momentum", type=float, default=0.9, help="SGD momentum")
    g.add_argument("--nesterov", action="store_true", help="Nesterov momentum for SGD")
    g.add_argument("--weight_decay", type=float, default=1e-4,
                   help="weight decay (never applied to biases and normalisation weights)")
    g.add_argument("--scheduler", choices=["step", "multistep", "cosine", "poly", "onecycle"], default="cosine",
                   help="learning-rate schedule after warm-up")
    g.add_argument("--lr_steps", type=float, nargs="+", default=None, metavar="EPOCH",
                   help="milestones in epochs for multistep (also override the default step schedule)")
    g.add_argument("--lr_ratios", type=float, nargs="+", default=None, metavar="FACTOR",
                   help="LR factor (of the peak) from each milestone on; default 0.1, 0.01, ...")
    g.add_argument("--poly_power", type=float, default=0.9, help="power of the poly schedule")
    g.add_argument("--onecycle_pct", type=float, default=0.3, help="fraction of steps rising in the one-cycle schedule")
    g.add_argument("--lookahead", action="store_true", help="wrap the optimizer in Lookahead")
    g.add_argument("--lookahead_alpha", type=float, default=0.5, help="Lookahead slow-weight step")
    g.add_argument("--lookahead_k", type=int, default=6, help="Lookahead synchronisation period")
    g.add_argument("--ema", action="store_true",
                   help="keep an exponential moving average of the weights, evaluated and saved beside them")
    g.add_argument("--ema_decay", type=float, default=0.9998, help="EMA decay per optimizer step")
    g.add_argument("--warmup", type=float, default=1.0, help="linear warm-up length in epochs")
    g.add_argument("--label_smoothing", type=float, default=0.0, help="label smoothing for softmax cross-entropy")
    g.add_argument("--accumulation_steps", type=int, default=1,
                   help="micro-batches whose gradients are summed before one optimizer step")
    g.add_argument("--amp", action="store_true",
                   help="mixed precision (bf16 where supported, else fp16 with a gradient scaler)")
    g.add_argument("--amp_dtype", choices=["auto", "bf16", "fp16"], default="auto", help="mixed-precision dtype")
    g.add_argument("--clip_grad", type=float, default=None, metavar="NORM",
                   help="clip the gradient norm to this value before each optimizer step")

    g = p.add_argument_group("augmentation")
    g.add_argument("--aug", action="store_true", help="turn on the per-image augmentation policy --aug_policy")
    g.add_argument("--aug_policy", choices=["autoaugment", "randaugment", "trivialaugment", "custom"],
                   default="randaugment", help="per-image augmentation policy (with --aug)")
    g.add_argument("--autoaugment_policy", choices=["imagenet", "cifar10", "svhn"], default="imagenet",
                   help="AutoAugment's learned policy")
    g.add_argument("--randaugment_n", type=int, default=2, help="RandAugment: operations per image")
    g.add_argument("--randaugment_m", type=int, default=9, help="RandAugment: magnitude (0-30)")
    g.add_argument("--custom_hflip", type=float, default=0.5, help="custom policy: horizontal flip probability")
    g.add_argument("--custom_vflip", type=float, default=0.0, help="custom policy: vertical flip probability")
    g.add_argument("--custom_rotate", type=float, default=10.0, help="custom policy: max rotation in degrees")
    g.add_argument("--custom_crop", type=float, default=0.8,
                   help="custom policy: min area of a random crop resized back (1 = off)")
    g.add_argument("--custom_blur", type=float, default=0.1, help="custom policy: Gaussian blur probability")
    g.add_argument("--custom_noise", type=float, default=0.0, help="custom policy: Gaussian noise std (0-255 units)")
    g.add_argument("--custom_jitter", type=float, default=0.2,
                   help="custom policy: colour jitter strength (brightness/contrast/saturation; hue = s/4)")
    g.add_argument("--random_erasing", type=float, default=0.0, help="random erasing probability per image")
    g.add_argument("--mixup", type=float, default=0.0, metavar="ALPHA", help="mixup Beta(alpha, alpha); 0 = off")
    g.add_argument("--mixup_prob", type=float, default=1.0, help="probability that a batch is mixed")
    g.add_argument("--cutmix", type=float, default=0.0, metavar="ALPHA", help="cutmix Beta(alpha, alpha); 0 = off")
    g.add_argument("--mix_switch_prob", type=float, default=0.5,
                   help="with both mixup and cutmix on: probability of cutmix for a mixed batch")
    g.add_argument("--multi_scale", action="store_true",
                   help="per batch, a random input size within +-15%% of --image_size (aspect kept)")
    g.add_argument("--class_balanced", action="store_true",
                   help="sample training images with weights inverse to their class frequency")

    g = p.add_argument_group("loss")
    g.add_argument("--criterion", choices=["softmax", "bce"], default="softmax",
                   help="softmax cross-entropy or sigmoid binary cross-entropy over one-vs-all targets")
    g.add_argument("--weighted_loss", action="store_true", help="weight the loss by --class_weights or --cost_matrix")
    g.add_argument("--class_weights", type=str, nargs="+", default=["auto"],
                   help="per-class weights: a list of numbers, a file of numbers, or auto (inverse frequency)")
    g.add_argument("--cost_matrix", type=str, default=None,
                   help="file of C rows of C costs (cost of predicting column for true row), with --weighted_loss")
    g.add_argument("--ghm_loss", action="store_true", help="gradient harmonizing mechanism (Li et al., AAAI 2019)")
    g.add_argument("--ghm_bins", type=int, default=30, help="GHM: gradient-norm bins")
    g.add_argument("--ghm_momentum", type=float, default=0.75, help="GHM: moving-average momentum of bin counts")
    g.add_argument("--ohm_loss", action="store_true", help="online hard-example mining")
    g.add_argument("--ohm_ratio", type=float, default=0.7, help="OHM: fraction of terms kept (the hardest)")
    g.add_argument("--threshold_loss", action="store_true", help="ignore terms already beyond a confidence threshold")
    g.add_argument("--threshold_low", type=float, default=0.1, help="threshold loss: other-class p below this is ignored")
    g.add_argument("--threshold_high", type=float, default=0.9, help="threshold loss: true-class p above this is ignored")
    g.add_argument("--focal_loss", action="store_true", help="focal modulation (1 - p_t) ** gamma")
    g.add_argument("--focal_gamma", type=float, default=2.0, help="focal loss gamma")

    g = p.add_argument_group("distillation and curriculum")
    g.add_argument("--distill", action="store_true",
                   help="train on alpha * teacher + (1 - alpha) * label targets from DATA/distill*.txt")
    g.add_argument("--distill_files", type=str, nargs="+", default=None,
                   help="teacher files to average (default: every DATA/distill*.txt)")
    g.add_argument("--distill_alpha", type=float, default=0.5, help="weight of the teachers' probabilities")
    g.add_argument("--distill_temperature", type=float, default=1.0,
                   help="softens the teachers' probabilities: p ** (1/T), renormalised")
    g.add_argument("--distill_missing", choices=["error", "label"], default="error",
                   help="an image missing from the teacher files: an error, or train it on its label")
    g.add_argument("--curriculum_thresholds", type=float, nargs="+", default=[0.7, 0.5, 0.3, 0.0],
                   help="--make_curriculum: true-class probability thresholds, high to low")
    g.add_argument("--curriculum_weights", type=float, nargs="+", default=[1.0, 0.7, 0.4, 0.1],
                   help="--make_curriculum: the weight paired with each threshold")
    g.add_argument("--curriculum_learning", action="store_true",
                   help="multiply each training sample's loss by its weight from the curriculum file")
    g.add_argument("--curriculum_file", type=str, default=None, help="curriculum file (default DATA/curriculum.txt)")
    g.add_argument("--curriculum_missing_weight", type=float, default=None,
                   help="weight for training images missing from the curriculum file (default: an error)")
    g.add_argument("--lr_finder_min", type=float, default=1e-6, help="LR range test: start LR")
    g.add_argument("--lr_finder_max", type=float, default=10.0, help="LR range test: end LR")
    g.add_argument("--lr_finder_steps", type=int, default=100, help="LR range test: number of steps")

    g = p.add_argument_group("export, predict and explain")
    g.add_argument("--opset", type=int, default=None, help="ONNX opset (default: the newest the installed onnxruntime runs)")
    g.add_argument("--topk", type=int, default=5, help="classes listed per image by --predict")
    g.add_argument("--class_indices", type=str, default=None,
                   help="JSON list or {index: name} map of class names, for checkpoints that carry none")
    g.add_argument("-v", "--visualize", action="store_true", help="--predict: save each image annotated with its top classes")
    g.add_argument("-s", "--save_log", action="store_true", help="--predict: also write a log of every prediction")
    g.add_argument("--visual_method", choices=["cam", "grad-cam", "grad-cam++", "score-cam", "xgrad-cam", "eigen-cam",
                                               "layer-cam"], default="grad-cam", help="heatmap method for --visual_data")
    g.add_argument("--visual_class", type=str, default=None,
                   help="explain this class (a name) instead of the predicted one")
    g.add_argument("--visual_limit", type=int, default=None, help="at most this many images for --visual_data")
    g.add_argument("--target_layer", type=str, default=None,
                   help="dotted module name of the layer to explain (default: the family's last conv stage with maps of at least 4 x 4)")
    g.add_argument("--channels_last", action="store_true", help="channels-last memory format for the model and inputs")
    g.add_argument("--compile", action="store_true", help="torch.compile the model")

    g = p.add_argument_group("experiments")
    g.add_argument("--sort_by", choices=list(SORT_KEYS), default="best_val_top1",
                   help="--compare and --sweep: the column the table is sorted by (best first)")
    g.add_argument("--sweep_devices", type=str, default=None, metavar="LIST",
                   help="--sweep: comma-separated devices, one run on each at a time: CUDA indices (0,1,2,3) or cpu; "
                        "a device listed twice runs two at once (default: one run at a time, default device)")
    g.add_argument("--trials", type=int, default=None,
                   help="--sweep with a search space: trials the study should hold (default: the file's trials)")
    g.add_argument("--study_storage", type=str, default=None, metavar="URL",
                   help="--sweep search: Optuna RDB URL shared by every worker (default: sqlite in the sweep folder)")
    g.add_argument("--tracker", choices=["none", "mlflow"], default="none",
                   help="also log params, per-epoch metrics and pictures to MLflow (MLFLOW_TRACKING_URI, else "
                        "<output>/mlruns)")

    g = p.add_argument_group("distributed and memory")
    g.add_argument("--sync_bn", action="store_true", help="convert batch norms to SyncBatchNorm under DDP (CUDA only: refused on the CPU)")
    g.add_argument("--lr_scale", choices=["none", "linear"], default="none",
                   help="linear: scale --lr by global batch / --lr_base_batch (the global batch is -b x processes "
                        "x --accumulation_steps); none: --lr is the LR of the global batch as given")
    g.add_argument("--lr_base_batch", type=int, default=256, help="reference batch of --lr_scale linear")
    g.add_argument("--use_checkpoint", action="store_true",
                   help="gradient checkpointing: recompute activations in the backward pass to save memory")
    g.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)

    g = p.add_argument_group("run")
    g.add_argument("--seed", type=int, default=0, help="random seed: the same seed repeats a CPU run exactly")
    g.add_argument("--resume", type=str, default=None,
                   help="checkpoint to resume training from, or to evaluate with --evaluation")
    g.add_argument("--overwrite", action="store_true",
                   help="start afresh in an existing run directory instead of resuming from its last.pth")
    g.add_argument("--output", type=str, default="output", help="root of run directories")
    g.add_argument("--tag", type=str, default="default", help="run name: the run directory is <output>/<arch>/<tag>")
    g.add_argument("--device", type=str, default=None, help="cpu, cuda or cuda:N (default: CUDA when present)")
    g.add_argument("--eval_split", choices=["train", "val", "test"], default="test", help="split for --evaluation")
    g.add_argument("--out", type=str, default=None,
                   help="with --evaluation: write per-image predictions to this .json, .yaml or .pkl file")
    g.add_argument("--no_progress", action="store_true", help="no tqdm progress bars")
    for action in p._actions:  # every float flag, present and future, refuses inf, nan and overflow
        if action.type is float:
            action.type = finite_float
    return p


def _actions_by_dest(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    actions = {}
    for action in parser._actions:  # argparse offers no public accessor
        if action.dest != "help" and action.dest not in actions:
            actions[action.dest] = action
    return actions


def _flag_name(action: argparse.Action) -> str:
    longs = [s for s in action.option_strings if s.startswith("--")]
    return (longs or action.option_strings or [action.dest])[0]


def _coerce_yaml_value(action: argparse.Action, key: str, value: Any, source: str) -> Any:
    """Convert a YAML value as the parser would convert the same flag, then check its choices."""
    flag = _flag_name(action)

    def fail(why: str) -> ConfigError:
        return ConfigError(f"{source}: key {key!r} (flag {flag}) has invalid value {value!r}: {why}")

    if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
        if not isinstance(value, bool):
            raise fail("expected true or false")
        return value
    if isinstance(action, argparse._StoreConstAction):
        value = action.const if value is True else value
    if value is None:
        return None
    nargs = action.nargs
    if nargs in (None, "?"):
        items, single = [value], True
    else:
        if not isinstance(value, (list, tuple)):
            raise fail(f"expected a list of {nargs} values")
        if isinstance(nargs, int) and len(value) != nargs:
            raise fail(f"expected {nargs} values, got {len(value)}")
        items, single = list(value), False
    converted = []
    for item in items:
        try:
            if action.type in (int, finite_float):
                if isinstance(item, bool) or (action.type is int and isinstance(item, float)):
                    raise ValueError("expected " + ("an integer" if action.type is int else "a number"))
                item = action.type(item)
            elif action.type in (None, str):
                item = str(item)
            else:
                item = action.type(str(item))
        except (argparse.ArgumentTypeError, TypeError, ValueError) as e:
            raise fail(str(e)) from None
        if action.choices is not None and item not in action.choices:
            raise fail("choose from " + ", ".join(map(str, action.choices)))
        converted.append(item)
    return converted[0] if single else converted


def load_yaml_defaults(parser: argparse.ArgumentParser, path: str) -> dict[str, Any]:
    """Read a YAML config with the safe loader and return parser defaults; unknown keys are errors."""
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"--config: file {path!r} does not exist")
    try:
        data = yaml.safe_load(file.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"--config: {path} is not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"--config: {path} must hold a mapping of flag names to values, got {type(data).__name__}")
    return coerce_flag_values(parser, data, f"--config: {path}", path)


def flag_dest(parser: argparse.ArgumentParser, key: Any, where: str) -> str:
    """The config key (dest) of a YAML key such as ``lr`` or ``--image-size``; unknown keys are errors
    with the closest names."""
    actions = _actions_by_dest(parser)
    dest = str(key).lstrip("-").replace("-", "_")
    if dest not in actions or dest == "config":
        close = difflib.get_close_matches(dest, list(actions), n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise ConfigError(f"{where}: unknown key {key!r}{hint}")
    return dest


def coerce_flag_values(parser: argparse.ArgumentParser, data: dict, where: str,
                       source: str | None = None) -> dict[str, Any]:
    """Flag values from YAML (``{flag: value}``) converted and checked as the parser would convert the
    same flags; ``where`` prefixes the error of an unknown key, ``source`` that of a bad value."""
    actions = _actions_by_dest(parser)
    values = {}
    for key, value in data.items():
        dest = flag_dest(parser, key, where)
        values[dest] = _coerce_yaml_value(actions[dest], str(key), value, source or where)
    return values


def flags_to_argv(parser: argparse.ArgumentParser, values: dict[str, Any]) -> list[str]:
    """Command-line flags that set ``values`` (config keys -> values); the inverse of parsing them.
    A false switch and a None value are left out (they are the defaults)."""
    actions = _actions_by_dest(parser)
    argv: list[str] = []
    for dest, value in values.items():
        action = actions[dest]
        flag = _flag_name(action)
        if value is None or value is False:
            continue
        if isinstance(action, argparse._StoreTrueAction):
            argv.append(flag)
        elif isinstance(value, (list, tuple)):
            argv += [flag, *(str(v) for v in value)]
        else:
            argv += [flag, str(value)]
    return argv


def validate(cfg: argparse.Namespace) -> None:
    """Check value ranges and combinations; raise ConfigError naming the flag and what is allowed."""
    def need(cond: bool, msg: str) -> None:
        if not cond:
            raise ConfigError(msg)

    modes = [m for m in MODES if getattr(cfg, m, False)]
    need(len(modes) <= 1, f"pick one mode, got {', '.join('--' + m for m in modes)}")
    need(cfg.epochs >= 1, f"--epochs must be >= 1, got {cfg.epochs}")
    need(cfg.batch_size >= 1, f"-b/--batch_size must be >= 1, got {cfg.batch_size}")
    need(cfg.lr > 0, f"--lr must be > 0, got {cfg.lr}")
    need(cfg.momentum >= 0, f"--momentum must be >= 0, got {cfg.momentum}")
    need(cfg.weight_decay >= 0, f"--weight_decay must be >= 0, got {cfg.weight_decay}")
    need(cfg.warmup >= 0, f"--warmup must be >= 0 epochs, got {cfg.warmup}")
    need(cfg.warmup < cfg.epochs or cfg.warmup == 0,
         f"--warmup ({cfg.warmup} epochs) must be shorter than --epochs ({cfg.epochs})")
    need(0 <= cfg.label_smoothing < 1, f"--label_smoothing must be in [0, 1), got {cfg.label_smoothing}")
    need(cfg.accumulation_steps >= 1, f"--accumulation_steps must be >= 1, got {cfg.accumulation_steps}")
    need(all(8 <= s <= MAX_IMAGE_SIDE for s in cfg.image_size),
         f"--image_size must be two integers in 8..{MAX_IMAGE_SIDE}, got {cfg.image_size} (one float input of "
         f"{MAX_IMAGE_SIDE}x{MAX_IMAGE_SIDE} already takes 200 MB, before activations)")
    need(cfg.num_classes is None or cfg.num_classes >= 1, f"--num_classes must be >= 1, got {cfg.num_classes}")
    need(0 <= cfg.hflip <= 1, f"--hflip must be a probability in [0, 1], got {cfg.hflip}")
    need(0 < cfg.rrc_scale[0] <= cfg.rrc_scale[1] <= 1,
         f"--rrc_scale must satisfy 0 < MIN <= MAX <= 1, got {cfg.rrc_scale}")
    need(0 < cfg.crop_pct <= 1, f"--crop_pct must be in (0, 1], got {cfg.crop_pct}")
    need(all(s > 0 for s in cfg.std), f"--std must be positive, got {cfg.std}")
    need(bool(re.fullmatch(r"[A-Za-z0-9_.\-]+", cfg.tag)) and cfg.tag.strip(".") != "",
         f"--tag may hold letters, digits, '_', '.' and '-' only, and not be '.' or '..' (it names the run "
         f"folder <output>/<arch>/<tag>), got {cfg.tag!r}")
    for flag in ("drop_rate", "drop_path_rate"):
        value = getattr(cfg, flag)
        need(value is None or 0 <= value < 1, f"--{flag} must be in [0, 1), got {value}")
    need(cfg.head_lr_mult > 0, f"--head_lr_mult must be > 0, got {cfg.head_lr_mult}")
    need(cfg.layer_decay is None or 0 < cfg.layer_decay <= 1, f"--layer_decay must be in (0, 1], got {cfg.layer_decay}")
    need(cfg.precise_bn >= 0, f"--precise_bn must be >= 0 batches, got {cfg.precise_bn}")
    if cfg.unfreeze_epoch is not None:
        need(cfg.freeze_backbone, "--unfreeze_epoch needs --freeze_backbone (it says when the frozen backbone "
                                  "starts training)")
        need(cfg.unfreeze_epoch >= 1, f"--unfreeze_epoch must be >= 1 (epochs are counted from 0), "
                                      f"got {cfg.unfreeze_epoch}")
    if cfg.device is not None:
        need(bool(re.fullmatch(r"cpu|cuda(:\d+)?", cfg.device)),
             f"--device must be cpu, cuda or cuda:N, got {cfg.device!r}")
    if cfg.out is not None:
        need(Path(cfg.out).suffix in (".json", ".yaml", ".yml", ".pkl"),
             f"--out must end in .json, .yaml or .pkl, got {cfg.out!r}")
    for mode in CHECKPOINT_MODES:
        if getattr(cfg, mode):
            need(cfg.resume is not None, f"--{mode} needs a checkpoint: add --resume PATH/TO/best.pth")
    need(not (cfg.gpu_decode and cfg.cache_dataset != "none"),
         "--gpu_decode and --cache_dataset memory exclude each other: the cache decodes once, up front")
    need(not cfg.gpu_decode or cfg.device is None or cfg.device.startswith("cuda"),
         f"--gpu_decode decodes with nvjpeg on a CUDA device, but --device is {cfg.device}")
    need(cfg.max_image_pixels >= 0, f"--max_image_pixels must be >= 0 (0 = no limit), got {cfg.max_image_pixels}")
    need(cfg.cache_max_gb > 0, f"--cache_max_gb must be > 0, got {cfg.cache_max_gb}")
    need(cfg.lr_base_batch >= 1, f"--lr_base_batch must be >= 1, got {cfg.lr_base_batch}")
    need(cfg.clip_grad is None or cfg.clip_grad > 0, f"--clip_grad must be > 0, got {cfg.clip_grad}")
    need(cfg.topk >= 1, f"--topk must be >= 1, got {cfg.topk}")
    need(cfg.visual_limit is None or cfg.visual_limit >= 1, f"--visual_limit must be >= 1, got {cfg.visual_limit}")
    for flag in ("predict", "visual_source", "class_indices"):
        path = getattr(cfg, flag)
        need(path is None or Path(path).exists(), f"--{flag}: {path!r} does not exist")
    if cfg.sweep is not None:
        need(Path(cfg.sweep).is_file(), f"--sweep: file {cfg.sweep!r} does not exist")
    need(cfg.trials is None or cfg.trials >= 1, f"--trials must be >= 1, got {cfg.trials}")
    for flag in ("sweep_devices", "trials", "study_storage"):
        need(getattr(cfg, flag) is None or cfg.sweep is not None, f"--{flag} is a --sweep option: add --sweep FILE")
    if cfg.sweep_devices is not None:
        need(all(re.fullmatch(r"\d+|cpu", d.strip()) for d in cfg.sweep_devices.split(",")),
             f"--sweep_devices must be comma-separated CUDA indices or cpu (e.g. 0,1 or cpu,cpu), "
             f"got {cfg.sweep_devices!r}")
    if cfg.publish:
        need(Path(cfg.publish[0]).is_file(), f"--publish: checkpoint {cfg.publish[0]!r} does not exist")
    for flag in ("hflip", "mixup_prob", "mix_switch_prob", "random_erasing", "custom_hflip", "custom_vflip",
                 "custom_blur", "distill_alpha"):
        value = getattr(cfg, flag)
        need(0 <= value <= 1, f"--{flag} must be a probability in [0, 1], got {value}")
    for flag in ("mixup", "cutmix", "custom_rotate", "custom_noise", "custom_jitter", "focal_gamma", "poly_power"):
        need(getattr(cfg, flag) >= 0, f"--{flag} must be >= 0, got {getattr(cfg, flag)}")
    need(0 < cfg.custom_crop <= 1, f"--custom_crop must be in (0, 1], got {cfg.custom_crop}")
    need(cfg.randaugment_n >= 0 and 0 <= cfg.randaugment_m <= 30,
         f"--randaugment_n must be >= 0 and --randaugment_m in 0..30, got {cfg.randaugment_n}, {cfg.randaugment_m}")
    need(cfg.ghm_bins >= 1, f"--ghm_bins must be >= 1, got {cfg.ghm_bins}")
    need(0 <= cfg.ghm_momentum < 1, f"--ghm_momentum must be in [0, 1), got {cfg.ghm_momentum}")
    need(0 < cfg.ohm_ratio <= 1, f"--ohm_ratio must be in (0, 1], got {cfg.ohm_ratio}")
    need(0 <= cfg.threshold_low < cfg.threshold_high <= 1,
         f"--threshold_low and --threshold_high need 0 <= low < high <= 1, got {cfg.threshold_low}, {cfg.threshold_high}")
    need(0 <= cfg.ema_decay < 1, f"--ema_decay must be in [0, 1), got {cfg.ema_decay}")
    need(0 < cfg.onecycle_pct < 1, f"--onecycle_pct must be in (0, 1), got {cfg.onecycle_pct}")
    need(0 <= cfg.lookahead_alpha <= 1 and cfg.lookahead_k >= 1,
         f"--lookahead_alpha must be in [0, 1] and --lookahead_k >= 1, got {cfg.lookahead_alpha}, {cfg.lookahead_k}")
    if cfg.scheduler == "multistep":
        need(bool(cfg.lr_steps), "--scheduler multistep needs --lr_steps EPOCH [EPOCH ...]")
    if cfg.lr_steps:
        need(all(b > a for a, b in zip([0.0] + cfg.lr_steps, cfg.lr_steps)),
             f"--lr_steps must be increasing positive epochs, got {cfg.lr_steps}")
        need(cfg.scheduler in ("step", "multistep"), f"--lr_steps needs --scheduler step or multistep, "
                                                     f"got {cfg.scheduler}")
    if cfg.lr_ratios:
        need(bool(cfg.lr_steps) and len(cfg.lr_ratios) == len(cfg.lr_steps),
             f"--lr_ratios needs one value per --lr_steps milestone, got {cfg.lr_ratios} for {cfg.lr_steps}")
    need(cfg.distill_temperature > 0, f"--distill_temperature must be > 0, got {cfg.distill_temperature}")
    need(len(cfg.curriculum_thresholds) == len(cfg.curriculum_weights),
         f"--curriculum_thresholds ({len(cfg.curriculum_thresholds)} values) and --curriculum_weights "
         f"({len(cfg.curriculum_weights)} values) must pair up")
    need(all(a > b for a, b in zip(cfg.curriculum_thresholds, cfg.curriculum_thresholds[1:])),
         f"--curriculum_thresholds must decrease, got {cfg.curriculum_thresholds}")
    need(all(w >= 0 for w in cfg.curriculum_weights), f"--curriculum_weights must be >= 0, got {cfg.curriculum_weights}")
    need(0 < cfg.lr_finder_min < cfg.lr_finder_max and cfg.lr_finder_steps >= 2,
         "--lr_finder_min must be positive and below --lr_finder_max, and --lr_finder_steps >= 2")
    if cfg.cost_matrix is not None:
        need(Path(cfg.cost_matrix).is_file(), f"--cost_matrix: file {cfg.cost_matrix!r} does not exist")
    if len(cfg.class_weights) == 1 and cfg.class_weights[0] != "auto":
        value = cfg.class_weights[0]
        try:
            float(value)
        except ValueError:
            need(Path(value).is_file(), f"--class_weights: {value!r} is neither auto, numbers, nor an existing file")
    if cfg.distill and cfg.train:
        files = cfg.distill_files or sorted(str(f) for f in Path(cfg.data).glob("distill*.txt"))
        need(bool(files), f"--distill needs teacher files: none given with --distill_files and no distill*.txt in "
                          f"{cfg.data}; run --knowledge train --resume TEACHER.pth first")
        for f in files:
            need(Path(f).is_file(), f"--distill_files: file {f!r} does not exist")
    need(cfg.resume is None or Path(cfg.resume).is_file(), f"--resume: file {cfg.resume!r} does not exist")
    if cfg.pretrained is not None and not is_weights_name(cfg.pretrained):
        need(Path(cfg.pretrained).is_file(), f"--pretrained: file {cfg.pretrained!r} does not exist (or give a "
                                             f"weights name such as imagenet)")
    if is_weights_name(cfg.pretrained):
        need(selected_mode(cfg) in PRETRAINED_MODES,
             f"--pretrained {cfg.pretrained}: weights by name are for --train and --lr_finder; other modes "
             f"read --resume or a local file")
    need(not (cfg.resume and cfg.pretrained and cfg.train),
         "--resume and --pretrained together: --resume continues a run (weights, optimizer, epoch), "
         "--pretrained starts a new one from weights only; pick one")


def parse_config(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse flags (and ``--config`` YAML defaults) into a validated, resolved config."""
    parser = build_parser()
    pre, _ = parser.parse_known_args(argv)
    yaml_defaults: dict[str, Any] = {}
    if pre.config:
        try:
            yaml_defaults = load_yaml_defaults(parser, pre.config)
        except ConfigError as e:
            parser.error(str(e))
        parser.set_defaults(**yaml_defaults)
    cfg = parser.parse_args(argv)
    on_command_line = given_on_command_line(argv)
    use_checkpoint_data(cfg, on_command_line | set(yaml_defaults))
    try:
        validate(cfg)
        check_mode_flags(cfg, on_command_line)
    except ConfigError as e:
        parser.error(str(e))
    defer_preprocessing(cfg, on_command_line | set(yaml_defaults))
    return cfg


def check_mode_flags(cfg: argparse.Namespace, on_command_line: set[str]) -> None:
    """Refuse training-only flags given on the command line with a mode that would ignore them."""
    mode = selected_mode(cfg)
    if mode is None or mode in ("train", "sweep"):  # a sweep passes the training flags on to every variant
        return
    ignored = TRAINING_ONLY_FLAGS - TRAINING_FLAGS_ALSO_READ_BY.get(mode, frozenset())
    flags = sorted(_flag_name(a) for dest, a in _actions_by_dest(build_parser()).items()
                   if dest in ignored and dest in on_command_line)
    if flags:
        raise ConfigError(f"--{mode} ignores training options, but the command line gives {', '.join(flags)}: "
                          f"drop {'it' if len(flags) == 1 else 'them'}, or train with --train")


def defer_preprocessing(cfg: argparse.Namespace, given: set[str]) -> None:
    """With named ``--pretrained`` weights, the preprocessing keys not set (flag or YAML) become None: the
    weights' own values fill them (``applications.common.apply_weights_preprocessing``), not the defaults."""
    if is_weights_name(cfg.pretrained) and selected_mode(cfg) in PRETRAINED_MODES:
        for key in PREPROCESSING_KEYS:
            if key not in given:
                setattr(cfg, key, None)


def given_on_command_line(argv: Sequence[str] | None) -> set[str]:
    """The config keys set by flags on the command line (not by defaults)."""
    parser = build_parser()
    for action in parser._actions:
        action.default = argparse.SUPPRESS
    return set(vars(parser.parse_known_args(argv)[0]))


def use_checkpoint_data(cfg: argparse.Namespace, given: set[str]) -> None:
    """A mode that runs a checkpoint with no ``--data`` given (flag or YAML) uses the data the checkpoint
    was trained on, so that ``--evaluation --resume CKPT`` evaluates on that data's split and
    ``--knowledge`` / ``--make_curriculum`` write next to it, not into the default ``data/digits``.
    Left alone when the checkpoint carries no config or its data folder is gone (``--data`` then says
    where the data is)."""
    if selected_mode(cfg) not in CHECKPOINT_MODES or not cfg.resume or "data" in given or not Path(cfg.resume).is_file():
        return
    import torch
    try:
        saved = torch.load(cfg.resume, map_location="cpu", weights_only=True, mmap=True).get("config")
    except Exception:  # not a checkpoint torch can map (a zip, a legacy file): loading it later says why
        return
    data = saved.get("data") if isinstance(saved, dict) else None
    if not data or data == cfg.data:
        return
    if not Path(data).exists():
        logger.warning("%s was trained on %s, which does not exist here: using --data %s", cfg.resume, data, cfg.data)
        return
    cfg.data = data
    if "dataset" not in given and saved.get("dataset") in DATASET_ALIASES.values():
        cfg.dataset = saved["dataset"]
    logger.info("no --data given: using %s (%s layout), the data %s was trained on", data, cfg.dataset, cfg.resume)


def config_to_dict(cfg: argparse.Namespace) -> dict[str, Any]:
    """Plain, YAML- and checkpoint-safe dict of the config (tuples become lists)."""
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in sorted(vars(cfg).items())}


def save_config(cfg: argparse.Namespace, path: str | Path) -> None:
    """Write the resolved config as YAML; it can be passed back with ``--config``."""
    data = {k: v for k, v in config_to_dict(cfg).items() if k != "config"}
    Path(path).write_text(yaml.safe_dump(data, sort_keys=True))


def load_saved_config(path: str | Path) -> dict[str, Any]:
    """Read a run directory's ``config.yaml`` (written by ``save_config``); a damaged one is a ConfigError
    that names the file and the way out, never a YAML traceback."""
    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        mark = getattr(e, "problem_mark", None)
        problem = (f"line {mark.line + 1}, column {mark.column + 1}: {e.problem}" if mark is not None
                   else " ".join(str(e).split())[:200])
        data = None
    else:
        problem = f"it holds a {type(data).__name__}, not a mapping of flags"
    if not isinstance(data, dict):
        raise ConfigError(f"{path} is damaged ({problem}); pass --overwrite to start afresh in that run directory, "
                          f"or use another --tag")
    return data


def config_conflicts(saved: dict[str, Any], cfg: argparse.Namespace) -> dict[str, tuple[Any, Any]]:
    """Keys whose value differs between a saved config and this one, ignoring resume-safe keys."""
    now = config_to_dict(cfg)
    return {k: (saved.get(k), now.get(k)) for k in sorted(set(saved) | set(now))
            if k not in RESUME_SAFE_KEYS and saved.get(k) != now.get(k)}


def selected_mode(cfg: argparse.Namespace) -> str | None:
    """The mode flag that is set, or None."""
    for mode in MODES:
        if getattr(cfg, mode, False):
            return mode
    return None
