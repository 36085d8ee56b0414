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
import re
from pathlib import Path
from typing import Any, Sequence

import yaml

REPO_ROOT = Path(__file__).resolve().parent
DEFAULT_DATA = REPO_ROOT / "data" / "digits"

# Mode flags: the dest of each boolean flag and the application module that runs it.
MODES: dict[str, str] = {
    "train": "applications.train",
    "evaluation": "applications.test",
}

DATASET_ALIASES = {"folder": "folder", "imagenet": "folder", "txt": "txt", "read_from_txt": "txt", "zip": "zip"}

# Keys that may differ when a run is resumed in the same run directory (they do not change what is
# trained): anything else that differs from the saved config.yaml is refused (see ``config_conflicts``).
RESUME_SAFE_KEYS = frozenset({
    "config", "train", "evaluation", "tag", "workers", "device", "epochs", "resume", "overwrite", "no_progress",
    "eval_split", "out", "log_interval", "output",
})


class ConfigError(ValueError):
    """A flag or config value is invalid; the message names the flag, the value and what is allowed."""


def _dataset_kind(value: str) -> str:
    key = str(value).lower()
    if key not in DATASET_ALIASES:
        raise argparse.ArgumentTypeError(
            f"invalid dataset kind {value!r} (choose from folder, txt, zip; aliases: imagenet, read_from_txt)")
    return DATASET_ALIASES[key]


def _workers(value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid worker count {value!r}: expected an integer >= 0") from None
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
                   help="evaluation geometry: letterbox, or resize the short side to size/crop_pct and centre-crop")
    g.add_argument("--crop_pct", type=float, default=0.875, help="centre-crop fraction for --eval_resize center_crop")
    g.add_argument("--mean", type=float, nargs=3, default=[0.485, 0.456, 0.406], help="normalisation mean (RGB)")
    g.add_argument("--std", type=float, nargs=3, default=[0.229, 0.224, 0.225], help="normalisation std (RGB)")
    g.add_argument("-b", "--batch_size", type=int, default=64, help="batch size per device")
    g.add_argument("-j", "--workers", type=_workers, default=2, help="data-loading worker processes")

    g = p.add_argument_group("model")
    g.add_argument("--arch", type=str, default="resnet18",
                   help="model name: a torchvision name, efficientnet-b0..b7, resnest50..269, or timm/<name>")
    g.add_argument("--pretrained", type=str, default=None,
                   help="local weights file (torchvision, timm or our checkpoint); a head of another size is skipped")

    g = p.add_argument_group("optimisation")
    g.add_argument("--epochs", type=int, default=30, help="number of training epochs")
    g.add_argument("--optimizer", choices=["sgd", "adam", "adamw", "radam"], default="sgd", help="optimizer")
    g.add_argument("--lr", type=float, default=0.1, help="peak learning rate")
    g.add_argument("--momentum", type=float, default=0.9, help="SGD momentum")
    g.add_argument("--nesterov", action="store_true", help="Nesterov momentum for SGD")
    g.add_argument("--weight_decay", type=float, default=1e-4,
                   help="weight decay (never applied to biases and normalisation weights)")
    g.add_argument("--scheduler", choices=["step", "cosine"], default="cosine",
                   help="learning-rate schedule after warm-up")
    g.add_argument("--warmup", type=float, default=1.0, help="linear warm-up length in epochs")
    g.add_argument("--label_smoothing", type=float, default=0.0, help="label smoothing for softmax cross-entropy")
    g.add_argument("--accumulation_steps", type=int, default=1,
                   help="micro-batches whose gradients are summed before one optimizer step")
    g.add_argument("--amp", action="store_true",
                   help="mixed precision (bf16 where supported, else fp16 with a gradient scaler)")
    g.add_argument("--amp_dtype", choices=["auto", "bf16", "fp16"], default="auto", help="mixed-precision dtype")

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
            if action.type in (int, float):
                if isinstance(item, bool) or (action.type is int and isinstance(item, float)):
                    raise ValueError(f"expected {action.type.__name__}")
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
    actions = _actions_by_dest(parser)
    defaults = {}
    for key, value in data.items():
        dest = str(key).lstrip("-").replace("-", "_")
        if dest not in actions or dest == "config":
            close = difflib.get_close_matches(dest, list(actions), n=3)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise ConfigError(f"--config: {path}: unknown key {key!r}{hint}")
        defaults[dest] = _coerce_yaml_value(actions[dest], str(key), value, path)
    return defaults


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
    need(all(s >= 8 for s in cfg.image_size), f"--image_size must be two integers >= 8, got {cfg.image_size}")
    need(cfg.num_classes is None or cfg.num_classes >= 1, f"--num_classes must be >= 1, got {cfg.num_classes}")
    need(0 <= cfg.hflip <= 1, f"--hflip must be a probability in [0, 1], got {cfg.hflip}")
    need(0 < cfg.rrc_scale[0] <= cfg.rrc_scale[1] <= 1,
         f"--rrc_scale must satisfy 0 < MIN <= MAX <= 1, got {cfg.rrc_scale}")
    need(0 < cfg.crop_pct <= 1, f"--crop_pct must be in (0, 1], got {cfg.crop_pct}")
    need(all(s > 0 for s in cfg.std), f"--std must be positive, got {cfg.std}")
    need(bool(re.fullmatch(r"[A-Za-z0-9_.\-]+", cfg.tag)),
         f"--tag may hold letters, digits, '_', '.' and '-' only, got {cfg.tag!r}")
    if cfg.device is not None:
        need(bool(re.fullmatch(r"cpu|cuda(:\d+)?", cfg.device)),
             f"--device must be cpu, cuda or cuda:N, got {cfg.device!r}")
    if cfg.out is not None:
        need(Path(cfg.out).suffix in (".json", ".yaml", ".yml", ".pkl"),
             f"--out must end in .json, .yaml or .pkl, got {cfg.out!r}")
    if cfg.evaluation:
        need(cfg.resume is not None, "--evaluation needs a checkpoint: add --resume PATH/TO/best.pth")
    for flag in ("resume", "pretrained"):
        path = getattr(cfg, flag)
        need(path is None or Path(path).is_file(), f"--{flag}: file {path!r} does not exist")
    need(not (cfg.resume and cfg.pretrained and cfg.train),
         "--resume and --pretrained together: --resume continues a run (weights, optimizer, epoch), "
         "--pretrained starts a new one from weights only; pick one")


def parse_config(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse flags (and ``--config`` YAML defaults) into a validated, resolved config."""
    parser = build_parser()
    pre, _ = parser.parse_known_args(argv)
    if pre.config:
        try:
            parser.set_defaults(**load_yaml_defaults(parser, pre.config))
        except ConfigError as e:
            parser.error(str(e))
    cfg = parser.parse_args(argv)
    try:
        validate(cfg)
    except ConfigError as e:
        parser.error(str(e))
    return cfg


def config_to_dict(cfg: argparse.Namespace) -> dict[str, Any]:
    """Plain, YAML- and checkpoint-safe dict of the config (tuples become lists)."""
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in sorted(vars(cfg).items())}


def save_config(cfg: argparse.Namespace, path: str | Path) -> None:
    """Write the resolved config as YAML; it can be passed back with ``--config``."""
    data = {k: v for k, v in config_to_dict(cfg).items() if k != "config"}
    Path(path).write_text(yaml.safe_dump(data, sort_keys=True))


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
