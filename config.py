"""The parser of ``main.py``, assembled from each mode's flag group; YAML defaults; validation with clear errors.

Flags and an optional ``--config file.yaml`` become one resolved config (an ``argparse.Namespace``):
the YAML keys set the parser's defaults, so flags given on the command line still win. Every value,
whether it came from the command line or the YAML file, goes through the same type conversion and
choice checks, and the resolved config is saved as ``config.yaml`` in the run directory.

The shared groups (data, model, numerics, run) live here; each mode declares its own groups and checks
in ``applications/flags/`` (the ``Mode`` records of ``MODE_REGISTRY``). The resolved config holds every
key of every group, but ``main.py --MODE --help`` shows, and the command line accepts, only the flags
that mode reads. Parsing reads no file but the ``--config`` YAML: the checks that look at files are each
mode's ``check_files``, which ``main.py`` runs before the mode.

This module must stay light: it imports neither torch nor data code.
"""
from __future__ import annotations

import argparse
import difflib
import functools
import logging
import math
import os
import re
import sys
from pathlib import Path
from typing import Any, Sequence

import yaml

from applications.flags import ConfigError, FlagGroup, Mode, need, use_checkpoint_data
from applications.flags import benchmark, compare, convert, curriculum, knowledge, lr_finder, predict, sweep, test, \
    train, visualize
from applications.flags.compare import SORT_KEYS  # noqa: F401  (compare and sweep import it from here)
from utils.atomic import write_text_atomic
from utils.weights_name import is_weights_name

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parent
DEFAULT_DATA = REPO_ROOT / "data" / "digits"

# Largest --image_size side: a network input far beyond any classification model's (224-800 px), still
# allocatable; 100000 x 100000 would be a 120 GB tensor per image, which the kernel may kill, not refuse.
MAX_IMAGE_SIDE = 4096
# Pillow's default ``Image.MAX_IMAGE_PIXELS`` (1 GiB / 4 bytes / 3), kept here so that this module does not
# import Pillow; tests/unit/test_bombs.py checks that it equals dataloader.io.DEFAULT_MAX_IMAGE_PIXELS.
DEFAULT_MAX_IMAGE_PIXELS = 89_478_485

DATASET_ALIASES = {"folder": "folder", "imagenet": "folder", "txt": "txt", "read_from_txt": "txt", "zip": "zip"}

# Preprocessing keys that named --pretrained weights supply unless set (see defer_preprocessing).
PREPROCESSING_KEYS = ("mean", "std", "interpolation", "eval_resize", "crop_pct")
# Modes that build a model from --pretrained (and so may take named weights and their preprocessing).
PRETRAINED_MODES = ("train", "lr_finder")


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


# ---- the shared groups: every mode reads them ----

def _add_data(g: argparse._ArgumentGroup) -> None:
    g.add_argument("--data", type=str, default=str(DEFAULT_DATA),
                   help="dataset root (default: data/digits in the repository, the bundled digits; modes that "
                        "run --resume: the data the checkpoint was trained on)")
    g.add_argument("--dataset", type=_dataset_kind, default="folder",
                   help="dataset layout: folder (alias imagenet), txt (alias read_from_txt) or zip")
    g.add_argument("--zip", dest="dataset", action="store_const", const="zip",
                   help="shortcut for --dataset zip")
    g.add_argument("-b", "--batch_size", type=int, default=64, help="batch size per device")


def _check_data(cfg: argparse.Namespace) -> None:
    need(cfg.batch_size >= 1, f"-b/--batch_size must be >= 1, got {cfg.batch_size}")


def _add_loading(g: argparse._ArgumentGroup) -> None:
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
    g.add_argument("--mean", type=float, nargs=3, default=[0.485, 0.456, 0.406],
                   help="normalisation mean (RGB) (unless set: named --pretrained weights' own)")
    g.add_argument("--std", type=float, nargs=3, default=[0.229, 0.224, 0.225],
                   help="normalisation std (RGB) (unless set: named --pretrained weights' own)")
    g.add_argument("--criterion", choices=["softmax", "bce"], default="softmax",
                   help="softmax cross-entropy or sigmoid binary cross-entropy over one-vs-all targets")


def _check_model(cfg: argparse.Namespace) -> None:
    need(all(8 <= s <= MAX_IMAGE_SIDE for s in cfg.image_size),
         f"--image_size must be two integers in 8..{MAX_IMAGE_SIDE}, got {cfg.image_size} (one float input of "
         f"{MAX_IMAGE_SIDE}x{MAX_IMAGE_SIDE} already takes 200 MB, before activations)")
    need(cfg.num_classes is None or cfg.num_classes >= 1, f"--num_classes must be >= 1, got {cfg.num_classes}")
    need(0 < cfg.crop_pct <= 1, f"--crop_pct must be in (0, 1], got {cfg.crop_pct}")
    need(all(s > 0 for s in cfg.std), f"--std must be positive, got {cfg.std}")


def _add_numerics(g: argparse._ArgumentGroup) -> None:
    g.add_argument("--seed", type=int, default=0, help="random seed: the same seed repeats a CPU run exactly")
    g.add_argument("--amp", action="store_true",
                   help="mixed precision (bf16 where supported, else fp16 with a gradient scaler)")
    g.add_argument("--amp_dtype", choices=["auto", "bf16", "fp16"], default="auto", help="mixed-precision dtype")


def _add_run(g: argparse._ArgumentGroup) -> None:
    g.add_argument("--resume", type=str, default=None,
                   help="checkpoint to resume training from, or to run with --evaluation, --predict, ...")
    g.add_argument("--overwrite", action="store_true",
                   help="start afresh in an existing run directory instead of resuming from its last.pth")
    g.add_argument("--output", type=str, default="output", help="root of run directories")
    g.add_argument("--tag", type=str, default="default", help="run name: the run directory is <output>/<arch>/<tag>")
    g.add_argument("--device", type=str, default=None, help="cpu, cuda or cuda:N (default: CUDA when present)")
    g.add_argument("--no_progress", action="store_true", help="no tqdm progress bars")
    g.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)


def _check_run(cfg: argparse.Namespace) -> None:
    need(bool(re.fullmatch(r"[A-Za-z0-9_.\-]+", cfg.tag)) and cfg.tag.strip(".") != "",
         f"--tag may hold letters, digits, '_', '.' and '-' only, and not be '.' or '..' (it names the run "
         f"folder <output>/<arch>/<tag>), got {cfg.tag!r}")
    if cfg.device is not None:
        need(bool(re.fullmatch(r"cpu|cuda(:\d+)?", cfg.device)),
             f"--device must be cpu, cuda or cuda:N, got {cfg.device!r}")


def _resume_file(cfg: argparse.Namespace, given: set[str]) -> None:
    need(cfg.resume is None or Path(cfg.resume).is_file(), f"--resume: file {cfg.resume!r} does not exist")


# Identity groups (not resume-safe): what is trained, on what. The others say how a run is carried out.
DATA = FlagGroup("data", _add_data, _check_data)
LOADING = FlagGroup("data loading", _add_loading, _check_loading, resume_safe=True)
MODEL = FlagGroup("model", _add_model, _check_model)
NUMERICS = FlagGroup("numerics", _add_numerics)
RUN = FlagGroup("run", _add_run, _check_run, _resume_file, resume_safe=True)
SHARED_GROUPS = (DATA, LOADING, MODEL, NUMERICS, RUN)

# Every mode, in --help order: its flag, the module that runs it, the groups it reads (a registry that
# each applications/flags/<module>.py fills for its own modes).
MODE_REGISTRY: dict[str, Mode] = {m.name: m for module in (train, test, knowledge, curriculum, lr_finder, convert,
                                                           predict, visualize, benchmark, compare, sweep)
                                  for m in module.MODES}
# Mode flags: the dest of each mode flag and the application module that runs it.
MODES: dict[str, str] = {name: m.run for name, m in MODE_REGISTRY.items()}
# Modes that run a trained checkpoint and so need --resume.
CHECKPOINT_MODES = tuple(name for name, m in MODE_REGISTRY.items() if m.needs_checkpoint)


def _all_groups() -> list[FlagGroup]:
    """The shared groups, then every mode's groups once each, in --help order."""
    groups: list[FlagGroup] = list(SHARED_GROUPS)
    for mode in MODE_REGISTRY.values():
        groups += [g for g in mode.groups if g not in groups]
    return groups


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows a flag's default after its help, except where the help already says it, where there is none
    (None), and a path inside the repository, which is shown relative to it (as the user types it there)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if "default" in text.lower() or action.default is None or action.default is argparse.SUPPRESS:
            return text
        if isinstance(action.default, (str, Path)) and Path(action.default).is_absolute():
            try:
                shown = Path(action.default).relative_to(REPO_ROOT).as_posix()
            except ValueError:
                shown = str(action.default)
            return f"{text} (default: {shown.replace('%', '%%')}, in the repository)"
        return super()._get_help_string(action)


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors: ``main.py: error: WHAT`` and exit 2 (a usage error, as argparse),
    without the usage block that buried the message under 13-77 lines; a mistyped flag gets the nearest
    known ones, as a mistyped YAML key does."""

    help_mode: str | None = None  # the mode whose --help the message points to

    def error(self, message: str):  # type: ignore[override]
        mode = f" --{self.help_mode}" if self.help_mode else ""
        self.exit(2, f"{self.prog}: error: {message}{self._suggestion(message)} (see {self.prog}{mode} --help)\n")

    def _suggestion(self, message: str) -> str:
        if not message.startswith("unrecognized arguments:"):
            return ""
        known = [o for a in self._actions for o in a.option_strings if o.startswith("--")]
        hints = []
        for token in message.split(":", 1)[1].split():
            flag = token.split("=", 1)[0]
            near = difflib.get_close_matches(flag, known, n=3, cutoff=0.75) if flag.startswith("--") else []
            if near:
                hints.append(f"{flag}: did you mean {' or '.join(near)}?")
        return f"; {'; '.join(hints)}" if hints else ""


def build_parser(help_for: str | None = "all") -> argparse.ArgumentParser:
    """The argument parser with every flag of every mode (every config key), grouped for ``--help``.

    ``help_for``: "all" shows every flag; a mode name shows only what that mode reads (the shared groups,
    its own, and the flags it reads from other modes); None shows the modes and the shared groups.
    """
    p = Parser(
        prog="main.py",
        description="Image-classification playground: train, evaluate and more, from one entry point.",
        epilog="main.py --MODE --help lists the flags that mode reads (e.g. main.py --evaluation --help).",
        formatter_class=HelpFormatter,
    )
    p.help_mode = help_for if help_for in MODE_REGISTRY else None
    p.add_argument("--config", type=str, default=None,
                   help="YAML file whose keys set the defaults of these flags (command-line flags still win)")
    g = p.add_argument_group("mode (pick one)")
    for mode in MODE_REGISTRY.values():
        mode.add_flag(g)
    for group in _all_groups():
        group.add(p.add_argument_group(group.title))
    for action in p._actions:  # every float flag, present and future, refuses inf, nan and overflow
        if action.type is float:
            action.type = finite_float
    if help_for != "all":
        shown = mode_reads(help_for) if help_for else _group_dests(p, SHARED_GROUPS) | set(MODE_REGISTRY)
        for action in p._actions:
            if action.dest not in shown | {"help", "config"}:
                action.help = argparse.SUPPRESS
    return p


@functools.lru_cache(maxsize=1)
def flag_defaults() -> dict[str, Any]:
    """Each config key's default when neither a flag nor a YAML file sets it (lists for tuples)."""
    return {a.dest: (list(a.default) if isinstance(a.default, tuple) else a.default)
            for a in build_parser()._actions if a.dest not in ("help", "config")}


def _group_dests(parser: argparse.ArgumentParser, groups: Sequence[FlagGroup]) -> set[str]:
    titles = {g.title for g in groups}
    return {a.dest for g in parser._action_groups if g.title in titles for a in g._group_actions}


def mode_reads(mode: str) -> set[str]:
    """The config keys ``--mode`` reads: the shared groups', its own groups', the single flags it borrows,
    and its own mode flag."""
    spec = MODE_REGISTRY[mode]
    return _group_dests(build_parser(), (*SHARED_GROUPS, *spec.groups)) | set(spec.flags) | {mode, "config"}


def flag_owner(dest: str) -> str | None:
    """The mode whose groups declare config key ``dest`` (the first in --help order), or None for a shared key."""
    parser = build_parser()
    for mode in MODE_REGISTRY.values():
        if dest == mode.name or dest in _group_dests(parser, mode.groups):
            return mode.name
    return None


def resume_safe_keys() -> frozenset[str]:
    """Keys that may differ when a run is resumed in the same run directory: the mode flags and the keys of
    groups marked ``resume_safe`` (how to run: workers, device, output, evaluation and export options, ...).
    The others (the model, the data, the training recipe) are refused when they differ from the saved
    config.yaml (``config_conflicts``)."""
    parser = build_parser()
    return frozenset({"config", *MODE_REGISTRY, *_group_dests(parser, [g for g in _all_groups() if g.resume_safe])})


# The keys that define the model: architecture, classes, input size, preprocessing and head (the model group).
MODEL_IDENTITY_KEYS: tuple[str, ...] = tuple(sorted(_group_dests(build_parser(), (MODEL,))))
RESUME_SAFE_KEYS = resume_safe_keys()


def _actions_by_dest(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    actions = {}
    for action in parser._actions:  # argparse offers no public accessor
        if action.dest != "help" and action.dest not in actions:
            actions[action.dest] = action
    return actions


def _flag_name(action: argparse.Action) -> str:
    longs = [s for s in action.option_strings if s.startswith("--")]
    return (longs or action.option_strings or [action.dest])[0]


def _expected(action: argparse.Action) -> str:
    """What a flag's YAML value must be, as an error message says it: "a number", "a list of 2 integers", ..."""
    noun = {int: "integer", finite_float: "number", None: "string", str: "string"}.get(action.type, "single value")
    if action.choices is not None:
        noun = "one of " + ", ".join(map(str, action.choices))
    if action.nargs in (None, "?"):
        return noun if noun.startswith("one of") else ("an " if noun[0] in "aeiou" else "a ") + noun
    count = f"{action.nargs} " if isinstance(action.nargs, int) else ""
    return f"a list of {count}values ({noun})" if noun.startswith("one of") else f"a list of {count}{noun}s"


def _coerce_yaml_value(action: argparse.Action, key: str, value: Any, source: str) -> Any:
    """Convert a YAML value as the parser would convert the same flag, then check its choices. A null is
    the value only of a flag that is unset by default (leaving the key out gives every other its default)."""
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
        if action.default is not None:
            default = action.default
            default = " ".join(map(str, default)) if isinstance(default, (list, tuple)) else default
            raise fail(f"expected {_expected(action)}, or leave the key out for the default ({default})")
        return None
    nargs = action.nargs
    if nargs in (None, "?"):
        items, single = [value], True
    else:
        if not isinstance(value, (list, tuple)):
            raise fail(f"expected {_expected(action)}")
        if isinstance(nargs, int) and len(value) != nargs:
            raise fail(f"expected {nargs} values, got {len(value)}")
        items, single = list(value), False
    converted = []
    for item in items:
        if item is None or isinstance(item, (list, tuple, dict)) or \
                (action.type in (int, finite_float) and isinstance(item, bool)) or \
                (action.type is int and isinstance(item, float)):
            raise fail(f"expected {_expected(action)}")
        try:
            if action.type is int:
                item = int(item)
            elif action.type is finite_float:
                float(item)  # not a number at all: the expected type; else finite_float's own reason (inf, nan)
                item = finite_float(item)
            elif action.type in (None, str):
                item = str(item)
            else:
                item = action.type(str(item))
        except (argparse.ArgumentTypeError, TypeError, ValueError) as e:
            numeric = action.type in (int, finite_float) and not isinstance(e, argparse.ArgumentTypeError)
            raise fail(f"expected {_expected(action)}" if numeric else str(e)) from None
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


def check_one_mode(cfg: argparse.Namespace) -> list[str]:
    """At most one mode flag is set; returns the ones set."""
    modes = [m for m in MODES if getattr(cfg, m, False)]
    need(len(modes) <= 1, f"pick one mode, got {', '.join('--' + m for m in modes)}")
    return modes


def validate(cfg: argparse.Namespace) -> None:
    """Check value ranges and combinations; raise ConfigError naming the flag and what is allowed.

    Every group checks its values whatever the mode (a value is valid or not wherever it came from), then
    the selected mode checks what it needs (``--resume`` for the modes that run a checkpoint, ...)."""
    modes = check_one_mode(cfg)
    for group in _all_groups():
        if group.check is not None:
            group.check(cfg)
    if modes:
        spec = MODE_REGISTRY[modes[0]]
        if spec.needs_checkpoint:
            need(cfg.resume is not None, f"--{spec.name} needs a checkpoint: add --resume PATH/TO/best.pth")
        if spec.check is not None:
            spec.check(cfg)


def check_files(cfg: argparse.Namespace, given: set[str]) -> None:
    """The selected mode's checks that look at files (``--resume`` exists, teacher files, ...) and its use
    of them (the data a checkpoint was trained on); ``given``: the keys set by flags or the YAML file.
    Not part of parsing: ``main.py`` runs them before the mode, so that the parser reads no file."""
    mode = selected_mode(cfg)
    if mode is None:
        return
    spec = MODE_REGISTRY[mode]
    for group in (*SHARED_GROUPS, *spec.groups):
        if group.check_files is not None:
            group.check_files(cfg, given)
    if spec.needs_checkpoint:
        use_checkpoint_data(cfg, given)
    if spec.check_files is not None:
        spec.check_files(cfg, given)


def _help_requested(argv: Sequence[str]) -> str | None:
    """With -h/--help in ``argv``: the mode whose help to show ("" for none); else None."""
    if not any(a in ("-h", "--help") for a in argv):
        return None
    return next((m for m in MODE_REGISTRY if f"--{m}" in argv), "")


def parse_command_line(argv: Sequence[str] | None = None) -> tuple[argparse.Namespace, set[str]]:
    """Parse flags (and ``--config`` YAML defaults) into a validated, resolved config; also return the keys
    the user set (by flag or YAML), which ``check_files`` needs. ``--MODE --help`` prints that mode's flags."""
    argv = list(sys.argv[1:] if argv is None else argv)
    help_mode = _help_requested(argv)
    if help_mode is not None:
        build_parser(help_mode or None).parse_args(["--help"])
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
    try:
        # flags the mode does not read are named before any value check reads them (--knowledge --epochs 1
        # is "ignores training options", not the warm-up rule)
        check_one_mode(cfg)
        check_mode_flags(cfg, on_command_line)
        validate(cfg)
    except ConfigError as e:
        build_parser(selected_mode(cfg)).error(str(e))  # the usage line of the mode's own flags
    given = on_command_line | set(yaml_defaults)
    defer_preprocessing(cfg, given)
    return cfg, given


def parse_config(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse flags (and ``--config`` YAML defaults) into a validated, resolved config (no file checks:
    see ``check_files``)."""
    return parse_command_line(argv)[0]


def check_mode_flags(cfg: argparse.Namespace, on_command_line: set[str]) -> None:
    """Refuse flags given on the command line with a mode that does not read them (its groups do not hold
    them) rather than drop them silently. YAML keys are not refused: the config.yaml of a training run
    passed to --evaluation is fine."""
    mode = selected_mode(cfg)
    if mode is None:
        return
    actions = _actions_by_dest(build_parser())
    by_owner: dict[str, list[str]] = {}
    for dest in sorted(on_command_line - mode_reads(mode)):
        by_owner.setdefault(flag_owner(dest) or "", []).append(_flag_name(actions[dest]))
    problems = []
    for owner, flags in sorted(by_owner.items(), key=lambda item: item[0] != "train"):
        listed, one = ", ".join(sorted(flags)), len(flags) == 1
        if owner == "train":
            problems.append(f"--{mode} ignores training options, but the command line gives {listed}: "
                            f"drop {'it' if one else 'them'}, or train with --train")
        else:
            problems.append(f"{listed} {'is a' if one else 'are'} --{owner} option{'' if one else 's'} that --{mode} "
                            f"does not read: drop {'it' if one else 'them'}, or run --{owner}")
    if problems:
        raise ConfigError("; ".join(problems))


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


FLAG_DOCS = REPO_ROOT / "docs" / "flags.md"


def _doc_default(action: argparse.Action) -> str:
    default = action.default
    if isinstance(action, argparse._StoreTrueAction) or default is None:
        return "off" if isinstance(action, argparse._StoreTrueAction) else ""
    if isinstance(default, str) and default.startswith(str(REPO_ROOT) + os.sep):
        default = os.path.relpath(default, REPO_ROOT)  # the same page in every checkout
    return " ".join(map(str, default)) if isinstance(default, (list, tuple)) else str(default)


def _doc_table(actions: Sequence[argparse.Action]) -> list[str]:
    rows = ["| flag | default | help |", "|---|---|---|"]
    for a in actions:
        names = ", ".join(f"`{s}`" for s in a.option_strings)
        text = (a.help or "").replace("%%", "%").replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")
        rows.append(f"| {names} | {_doc_default(a).replace('|', ' ')} | {text} |")
    return rows


def flag_reference() -> str:
    """The flag reference (``docs/flags.md``): the shared flags, then one section per mode with the flags
    it reads (a group shared by several modes is listed under the first and referred to by the others)."""
    parser = build_parser()
    actions = {g.title: [a for a in g._group_actions if a.help != argparse.SUPPRESS] for g in parser._action_groups}
    by_dest = _actions_by_dest(parser)
    lines = ["# Flags of main.py", "",
             "Generated from the parser by `python config.py` (tests/unit/test_flag_docs.py checks that it is current). "
             "`main.py --MODE --help` prints the same for one mode; a flag that a mode does not read is refused "
             "when given with it on the command line (keys of a `--config` YAML file are not).", "",
             "## Shared flags (every mode)", "", *_doc_table([by_dest["config"]]), ""]
    for group in SHARED_GROUPS:
        lines += [f"### {group.title}", "", *_doc_table(actions[group.title]), ""]
    listed: dict[str, str] = {}
    for mode in MODE_REGISTRY.values():
        lines += [f"## --{mode.name}", "", *_doc_table([by_dest[mode.name]]), ""]
        for group in mode.groups:
            if group.title in listed:
                lines += [f"Reads the *{group.title}* flags (see `--{listed[group.title]}`).", ""]
            else:
                listed[group.title] = mode.name
                lines += [f"### {group.title}", "", *_doc_table(actions[group.title]), ""]
        if mode.flags:
            lines += ["Also reads: " + ", ".join(f"`{_flag_name(by_dest[d])}` (see `--{flag_owner(d)}`)"
                                                 for d in mode.flags) + ".", ""]
    return "\n".join(lines).rstrip() + "\n"


def write_flag_docs(path: str | Path = FLAG_DOCS) -> Path:
    """Write ``flag_reference()`` to ``path`` (default ``docs/flags.md``)."""
    return write_text_atomic(path, flag_reference())


def config_to_dict(cfg: argparse.Namespace) -> dict[str, Any]:
    """Plain, YAML- and checkpoint-safe dict of the config (tuples become lists)."""
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in sorted(vars(cfg).items())}


def save_config(cfg: argparse.Namespace, path: str | Path) -> None:
    """Write the resolved config as YAML; it can be passed back with ``--config``."""
    data = {k: v for k, v in config_to_dict(cfg).items() if k != "config"}
    write_text_atomic(path, yaml.safe_dump(data, sort_keys=True))


def load_saved_config(path: str | Path) -> dict[str, Any]:
    """Read a run directory's ``config.yaml`` (written by ``save_config``); a damaged one is a ConfigError
    that names the file and the way out, never a YAML traceback (the reader is ``utils.runs.read_config``,
    as for ``--compare``)."""
    from utils.runs import RunFolderError, read_config  # not at the top: config stays light (no numpy)
    try:
        return read_config(Path(path), loader=yaml.SafeLoader)
    except RunFolderError as e:
        raise ConfigError(f"{path} is damaged ({e.problem}); pass --overwrite to start afresh in that run "
                          f"directory, or use another --tag") from None


def config_conflicts(saved: dict[str, Any], cfg: argparse.Namespace) -> dict[str, tuple[Any, Any]]:
    """Keys whose value differs between a saved config and this one, ignoring resume-safe keys. A key the
    saved config lacks (a flag added after that run was made) counts as that flag's default, which is what
    the run used, so an old run resumes as long as the new flag is left at its default."""
    now = config_to_dict(cfg)
    parser = build_parser()

    def before(key: str) -> Any:
        if key in saved:
            return saved[key]
        default = parser.get_default(key)
        return list(default) if isinstance(default, tuple) else default

    return {k: (before(k), now.get(k)) for k in sorted(set(saved) | set(now))
            if k not in RESUME_SAFE_KEYS and before(k) != now.get(k)}


def selected_mode(cfg: argparse.Namespace) -> str | None:
    """The mode flag that is set, or None."""
    for mode in MODES:
        if getattr(cfg, mode, False):
            return mode
    return None


if __name__ == "__main__":  # python config.py [PATH]: regenerate docs/flags.md
    print(write_flag_docs(*sys.argv[1:2]))
