"""Saved configs: a run directory's ``config.yaml`` (write; read back by ``read_config``, which ``--compare``
and ``--sweep`` use too; the keys that conflict on resume) and the config a checkpoint was trained with (its
data, for the modes that run a checkpoint)."""
from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

import yaml

from config.base import ConfigError
from config.parser import RESUME_SAFE_KEYS, build_parser
from config.shared import DATASET_ALIASES
from utils.atomic import write_text_atomic

# libyaml's safe loader when PyYAML has it: 10x faster than the pure-Python one over hundreds of configs.
_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
# The column flags of the layouts that have columns (a checkpoint's run reads its data with them again).
COLUMN_FLAGS = {"csv": ("path_col", "label_col"), "hf": ("label_col", "image_col")}


def use_checkpoint_data(cfg: argparse.Namespace, given: set[str], task: bool = True,
                        checkpoint: str | None = None) -> None:
    """A mode that runs a checkpoint with no ``--data`` given (flag or YAML) uses the data the checkpoint
    was trained on, so that ``--evaluation --resume CKPT`` evaluates on that data's split and
    ``--knowledge`` / ``--make_curriculum`` write next to it, not into the default ``data/digits``.
    Left alone when the checkpoint carries no config or its data folder is gone (``--data`` then says
    where the data is). Run before every mode with ``needs_checkpoint`` (``check_files``). ``task``: the mode
    reads its data's labels, so a multi-label checkpoint's task applies (:func:`use_checkpoint_task`); a mode that
    does not (``--predict``) with ``--data`` given reads nothing here (the checkpoint is read once, by the mode).
    ``checkpoint``: the checkpoint to read, when not ``--resume`` (``--average``'s last one)."""
    checkpoint = checkpoint or cfg.resume
    if not checkpoint or not Path(checkpoint).is_file() or ("data" in given and not task):
        return
    from utils.checkpoint import saved_config  # not at the top: config stays torch-free
    saved = saved_config(checkpoint)
    if isinstance(saved, dict):
        use_checkpoint_task(cfg, saved, given, checkpoint)
    if "data" in given:
        return
    data = saved.get("data") if isinstance(saved, dict) else None
    if not data or data == cfg.data:
        return
    logger = logging.getLogger("config")
    if (saved.get("dataset") != "hf" and "://" not in data and "{" not in data  # shards: a URL or a pattern;
            and not Path(data).exists()):  # hf: also a Hub name, which is no path
        logger.warning("%s was trained on %s, which does not exist here: using --data %s", checkpoint, data, cfg.data)
        return
    cfg.data = data
    if "dataset" not in given and saved.get("dataset") in set(DATASET_ALIASES.values()):
        cfg.dataset = saved["dataset"]
    if cfg.dataset == saved.get("dataset"):  # a csv or hf dataset's columns, unless given
        for key in COLUMN_FLAGS.get(cfg.dataset, ()):
            if key not in given and isinstance(saved.get(key), str):
                setattr(cfg, key, saved[key])
    logger.info("no --data given: using %s (%s layout), the data %s was trained on", data, cfg.dataset, checkpoint)


# The flags that say how a multi-label model's data writes its label sets.
LABEL_SET_FLAGS = ("label_delim", "allow_empty_labels")


def use_checkpoint_task(cfg: argparse.Namespace, saved: dict[str, Any], given: set[str],
                        checkpoint: str | None = None) -> None:
    """A checkpoint trained with ``--multi_label`` is run as one (its data read as label sets, with its
    ``--label_delim`` and ``--allow_empty_labels`` unless given): the task is the model's, not a flag to repeat."""
    if saved.get("multi_label") is not True:
        return
    if not cfg.multi_label:
        cfg.multi_label = True
        logging.getLogger("config").info("%s is a multi-label model: its data is read as label sets",
                                          checkpoint or cfg.resume)
    for key in (*LABEL_SET_FLAGS, "criterion"):  # the criterion: not softmax, which the task refused
        if key not in given and key in saved:
            setattr(cfg, key, saved[key])


def config_to_dict(cfg: argparse.Namespace) -> dict[str, Any]:
    """Plain, YAML- and checkpoint-safe dict of the config (tuples become lists)."""
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in sorted(vars(cfg).items())}


def save_config(cfg: argparse.Namespace, path: str | Path) -> None:
    """Write the resolved config as YAML; it can be passed back with ``--config``."""
    data = {k: v for k, v in config_to_dict(cfg).items() if k != "config"}
    write_text_atomic(path, yaml.safe_dump(data, sort_keys=True))


class RunFolderError(ValueError):
    """A file of a run directory that cannot be read as a run's: ``path`` names the file, ``problem`` says
    what is wrong with it (one line)."""

    def __init__(self, path: str | Path, problem: str) -> None:
        self.path, self.problem = Path(path), problem
        super().__init__(f"{path}: {problem}")


def read_config(path: Path, loader: type = _YAML_LOADER) -> dict[str, Any]:
    """A run's ``config.yaml`` as a dict (an empty file is ``{}``). Damaged text (not UTF-8, not YAML, a
    NUL byte) or anything but a mapping is a ``RunFolderError``; an OSError (cannot open) passes through."""
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=loader)
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise RunFolderError(path, yaml_problem(e)) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise RunFolderError(path, f"it holds a {type(data).__name__}, not a mapping of flags")
    return data


def yaml_problem(e: yaml.YAMLError | UnicodeDecodeError) -> str:
    """What is wrong with a YAML text, in one line: where (line and column, or position) and why."""
    mark = getattr(e, "problem_mark", None)
    if mark is not None:
        return f"line {mark.line + 1}, column {mark.column + 1}: {' '.join(str(e.problem).split())}"
    if isinstance(e, yaml.reader.ReaderError):  # a character YAML refuses (a NUL byte, a control character)
        char = e.character if isinstance(e.character, int) else ord(e.character)
        return f"position {e.position}: unacceptable character #x{char:04x} ({e.reason})"
    return " ".join(str(e).split())[:200]


def load_saved_config(path: str | Path) -> dict[str, Any]:
    """Read a run directory's ``config.yaml`` (written by ``save_config``); a damaged one is a ConfigError
    that names the file and the way out, never a YAML traceback (the reader is ``read_config``, as for
    ``--compare``)."""
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
