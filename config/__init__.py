"""The parser of ``main.py``, assembled from each mode's flag group; YAML defaults; validation with clear errors.

Flags and an optional ``--config file.yaml`` become one resolved config (an ``argparse.Namespace``):
the YAML keys set the parser's defaults, so flags given on the command line still win. Every value,
whether it came from the command line or the YAML file, goes through the same type conversion and
choice checks, and the resolved config is saved as ``config.yaml`` in the run directory.

The shared groups (data, model, numerics, run) live in ``config/shared.py``; each mode declares its own
groups and checks in ``config/modes/`` (the ``Mode`` records of ``MODE_REGISTRY``). The resolved config
holds every key of every group, but ``main.py --MODE --help`` shows, and the command line accepts, only the
flags that mode reads. Parsing reads no file but the ``--config`` YAML: the checks that look at files are each
mode's ``check_files``, which ``main.py`` runs before the mode.

The package: ``base`` (FlagGroup, Mode, ConfigError), ``shared`` (the shared groups), ``modes/`` (one file per
mode), ``registry`` (MODE_REGISTRY), ``parser`` (build_parser and what it tells about the keys),
``yaml_tree`` (config files that build on each other: ``base:``), ``yaml_values`` (YAML values converted as
flags), ``command_line`` (parse and check), ``saved`` (config.yaml and a checkpoint's config), ``flag_docs``
(docs/flags.md; ``python -m config`` writes it). This package re-exports their public names. It must stay
light: it imports neither torch nor data code, and no mode of ``applications/``.
"""
from __future__ import annotations

from config.base import ConfigError, FlagGroup, Mode, need
from config.command_line import (
    check_files,
    check_mode_flags,
    check_one_mode,
    defer_preprocessing,
    given_on_command_line,
    parse_command_line,
    parse_config,
    validate,
)
from config.flag_docs import FLAG_DOCS, flag_reference, write_flag_docs
from config.modes.compare import SORT_KEYS
from config.parser import (
    MODEL_IDENTITY_KEYS,
    RESUME_SAFE_KEYS,
    HelpFormatter,
    Parser,
    build_parser,
    flag_defaults,
    flag_owner,
    flags_to_argv,
    mode_reads,
    resume_safe_keys,
)
from config.registry import CHECKPOINT_MODES, MODE_REGISTRY, MODES, selected_mode
from config.saved import config_conflicts, config_to_dict, load_saved_config, save_config, use_checkpoint_data
from config.shared import (
    DATA,
    DATASET_ALIASES,
    DEFAULT_DATA,
    DEFAULT_MAX_IMAGE_PIXELS,
    LOADING,
    MAX_IMAGE_SIDE,
    MODEL,
    NUMERICS,
    PREPROCESSING_KEYS,
    PRETRAINED_MODES,
    REPO_ROOT,
    RUN,
    SHARED_GROUPS,
    available_cores,
    default_criterion,
    finite_float,
)
from config.yaml_tree import merge_config, read_config_file, read_config_tree
from config.yaml_values import coerce_flag_values, flag_dest, load_yaml_defaults

__all__ = [
    "CHECKPOINT_MODES", "DATA", "DATASET_ALIASES", "DEFAULT_DATA", "DEFAULT_MAX_IMAGE_PIXELS", "FLAG_DOCS", "LOADING",
    "MAX_IMAGE_SIDE", "MODEL", "MODEL_IDENTITY_KEYS", "MODES", "MODE_REGISTRY", "NUMERICS", "PREPROCESSING_KEYS",
    "PRETRAINED_MODES", "REPO_ROOT", "RESUME_SAFE_KEYS", "RUN", "SHARED_GROUPS", "SORT_KEYS",
    "ConfigError", "FlagGroup", "HelpFormatter", "Mode", "Parser",
    "available_cores", "build_parser", "check_files", "check_mode_flags", "check_one_mode", "coerce_flag_values",
    "config_conflicts", "config_to_dict", "default_criterion", "defer_preprocessing", "finite_float", "flag_dest",
    "flag_defaults",
    "flag_owner", "flag_reference", "flags_to_argv", "given_on_command_line", "load_saved_config", "load_yaml_defaults",
    "merge_config", "mode_reads", "need", "parse_command_line", "parse_config",
    "read_config_file", "read_config_tree", "resume_safe_keys", "save_config", "selected_mode",
    "use_checkpoint_data", "validate", "write_flag_docs",
]
