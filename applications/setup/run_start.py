"""How a ``--train`` run starts in its run directory: afresh, resumed from ``last.pth`` or a given
checkpoint, or refused (other settings in the folder, or ``--overwrite`` of a folder that is not a run)."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from config import ConfigError, config_conflicts, load_saved_config
from dataloader.splits import check_split
from utils.checkpoint import previous_path
from utils.rundir import OPEN_RUN_FILES, has_checkpoint


def plan_run_start(cfg: argparse.Namespace, run_dir: Path) -> tuple[Path | None, bool]:
    """Decide how this run starts, changing nothing on disk: returns the checkpoint to resume from (or
    None) and whether the run directory is to be cleared first (``--overwrite``).

    A rerun of the same command resumes from ``last.pth``; different flags in an existing run
    directory are refused unless ``--resume`` or ``--overwrite`` says what to do. ``--overwrite`` clears
    only a folder that holds a run of this very ``--arch`` and ``--tag`` (see ``holds_this_run``).
    """
    last = run_dir / "checkpoints" / "last.pth"
    if cfg.resume:
        return Path(cfg.resume), False
    if cfg.overwrite:
        if not holds_this_run(run_dir, cfg):
            raise ValueError(f"--overwrite refused: {run_dir} does not hold a training run of --arch {cfg.arch} "
                             f"--tag {cfg.tag} (no config.yaml of such a run in it), so nothing was deleted; "
                             f"pick another --tag or --output, or empty that folder yourself")
        return None, True
    saved_cfg = run_dir / "config.yaml"
    if saved_cfg.is_file() and (last.is_file() or previous_path(last).is_file()):
        conflicts = config_conflicts(load_saved_config(saved_cfg), cfg)
        if conflicts:
            diff = "; ".join(f"--{k}: {a!r} -> {b!r}" for k, (a, b) in conflicts.items())
            raise ValueError(f"run directory {run_dir} holds a run with other settings ({diff}); use another "
                             f"--tag, pass --overwrite to start afresh, or --resume to continue from a checkpoint")
        return last, False
    return None, False


def holds_this_run(run_dir: Path, cfg: argparse.Namespace) -> bool:
    """True when ``run_dir`` is ours to clear: nothing in it but what this run just opened, or a
    ``config.yaml`` written by a training run of the same ``--arch`` and ``--tag`` (the marker a run
    directory carries from its first epoch on; a folder of anything else has no such file)."""
    if {child.name for child in run_dir.iterdir()} <= OPEN_RUN_FILES:
        return True
    if not (run_dir / "config.yaml").is_file():
        return False
    try:
        saved = load_saved_config(run_dir / "config.yaml")
    except ConfigError:  # damaged: still ours when our checkpoints sit beside it (the message offers --overwrite)
        return has_checkpoint(run_dir)
    except OSError:
        return False
    return saved.get("train") is True and \
        saved.get("arch") == cfg.arch and saved.get("tag") == cfg.tag


def check_run_split(run_dir: Path, table: dict[str, Any] | None, resuming: bool) -> bool:
    """Whether ``run_dir`` already holds this run's ``split.json`` (``table``: the split carved out of train,
    None without ``--val_fraction``/``--test_fraction``). A resumed run recomputes its split and it must
    equal the saved one (a SplitError names the run folder and what differs); every rank checks, so all
    stop together."""
    return table is not None and resuming and check_split(run_dir, table)
