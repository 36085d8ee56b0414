"""Reading run directories without torch: each run's flags, history and status, and the comparison of
many runs (the flags that differ, the metrics, a plot of their curves) that ``--compare`` and
``--sweep`` print and write.

A run directory is a folder holding ``config.yaml`` (written when a training run starts); its
``metrics.json`` gains one history row per epoch and the ``test`` summary when the run finishes.
Its status is read from those files and the last line of its ``log.txt``:

- ``finished``: ``metrics.json`` has the test result;
- ``failed``: it has not, and the log's last line is the ``run failed: ...`` line that the log writes when
  a run ends with an error (``utils.misc.log_to_file``);
- ``pruned``: it has not, and a search stopped it as hopeless (the sweep writes the file ``PRUNED``);
- ``interrupted``: anything else: stopped by a signal, killed, or still running. Rerunning its command
  resumes it.
"""
from __future__ import annotations

import csv
import glob
import json
import logging
import os
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Sequence

import yaml

from utils.atomic import atomic_write, write_text_atomic
from utils.misc import FAILED_MARK
from utils.table import format_table

logger = logging.getLogger(__name__)

PRUNED_FILE = "PRUNED"
# libyaml's safe loader when PyYAML has it: 10x faster than the pure-Python one over hundreds of configs.
_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
# Keys that never describe what a run trained (where it lives, how it was launched, the mode flags of
# config.MODES): not "differing flags", not HParams.
NOT_SETTINGS = frozenset({"tag", "output", "config", "resume", "overwrite", "no_progress", "local_rank",
                          "sort_by", "sweep_devices", "sweep_only", "trials", "study_storage", "max_variants",
                          "tracker",
                          "train", "evaluation", "knowledge", "make_curriculum", "lr_finder", "jit", "onnx", "openvino", "predict",
                          "visual_data", "visual_source", "flops", "throughput", "summary", "publish", "compare",
                          "sweep"})
# Folders a run search never enters: inside a run, or a tracker's store.
_SKIP_DIRS = frozenset({"checkpoints", "tensorboard", "export", "mlruns", "__pycache__"})


@dataclass
class RunRecord:
    """What one run directory says about its run (read from its files; nothing is imported or loaded)."""
    path: Path
    config: dict[str, Any]
    history: list[dict[str, Any]] = field(default_factory=list)
    test: dict[str, Any] | None = None
    status: str = "interrupted"
    failure: str = ""

    @cached_property
    def metrics(self) -> dict[str, Any]:
        """The comparison's numbers: best val top-1 and its (1-based) epoch, test top-1/top-5, epochs done,
        training minutes (the sum of the epochs' training time) and the median training img/s."""
        vals = [(row.get("val_top1"), i) for i, row in enumerate(self.history) if row.get("val_top1") is not None]
        best, best_i = max(vals, key=lambda v: (v[0], -v[1])) if vals else (None, None)
        speeds = sorted(row["img_per_s"] for row in self.history if row.get("img_per_s") is not None)
        test = self.test or {}
        return {"best_val_top1": best, "best_epoch": None if best_i is None else self.history[best_i]["epoch"] + 1,
                "test_top1": test.get("test_top1"), "test_top5": test.get("test_top5"),
                "epochs_done": len(self.history), "epochs": self.config.get("epochs"),
                "train_min": sum(row.get("time", 0.0) for row in self.history) / 60 if self.history else None,
                "img_per_s": speeds[len(speeds) // 2] if speeds else None}


def find_runs(paths: Sequence[str | Path]) -> list[Path]:
    """Run directories named by ``paths`` (globs expanded): each path is a run directory itself or a
    folder searched for them. Errors name a path that matches nothing."""
    found: dict[Path, None] = {}
    for raw in paths:
        matches = sorted(glob.glob(str(raw))) if glob.has_magic(str(raw)) else [str(raw)]
        matches = [m for m in matches if Path(m).exists()]
        if not matches:
            raise FileNotFoundError(f"--compare: {raw!r} does not exist; give run directories or folders holding them")
        for m in matches:
            for run in _runs_under(Path(m)):
                found.setdefault(run.resolve())
    return list(found)


def _runs_under(root: Path) -> list[Path]:
    if (root / "config.yaml").is_file():
        return [root]
    runs = []
    for folder, dirs, files in os.walk(root):
        if "config.yaml" in files:
            runs.append(Path(folder))
            dirs[:] = []  # a run's own sub-folders hold no runs
        else:
            dirs[:] = sorted(d for d in dirs if d not in _SKIP_DIRS and not d.startswith("."))
    return runs


def read_run(path: Path) -> RunRecord:
    """The flags, history, test result and status of the run in ``path``."""
    config = yaml.load((path / "config.yaml").read_text(), Loader=_YAML_LOADER) or {}
    metrics: dict[str, Any] = {}
    if (path / "metrics.json").is_file():
        try:
            metrics = json.loads((path / "metrics.json").read_text())
        except json.JSONDecodeError as e:
            logger.warning("%s/metrics.json is not valid JSON (%s): read as a run with no epochs", path, e)
    record = RunRecord(path, config, list(metrics.get("history", [])), metrics.get("test"))
    last = _last_line(path / "log.txt")
    if record.test is not None:
        record.status = "finished"
    elif FAILED_MARK in last:
        record.status, record.failure = "failed", last.split(FAILED_MARK, 1)[1]
    elif (path / PRUNED_FILE).is_file():
        record.status = "pruned"
    return record


def _last_line(path: Path, size: int = 4096) -> str:
    """The last non-empty line of a text file (read from its end), '' when there is none."""
    if not path.is_file():
        return ""
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        f.seek(max(0, f.tell() - size))
        lines = f.read().decode("utf-8", "replace").strip().splitlines()
    return lines[-1] if lines else ""


def differing_keys(configs: Sequence[dict[str, Any]]) -> list[str]:
    """The config keys whose values are not the same in every config (a missing key counts as None),
    less those that do not change what is trained (``NOT_SETTINGS``)."""
    keys = sorted(set().union(*configs)) if configs else []
    return [k for k in keys if k not in NOT_SETTINGS and any(c.get(k) != configs[0].get(k) for c in configs[1:])]


def format_value(value: Any) -> str:
    """A flag value as it reads on the command line: lists space-separated, None as '-'."""
    if value is None:
        return "-"
    if isinstance(value, (list, tuple)):
        return " ".join(format_value(v) for v in value)
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def run_label(record: RunRecord, keys: Sequence[str]) -> str:
    """A short name for a run in a plot's legend: its differing flags, else its tag."""
    return ", ".join(f"{k}={format_value(record.config.get(k))}" for k in keys) or str(record.config.get("tag", ""))


def sort_runs(records: Sequence[RunRecord], sort_by: str, larger_is_better: bool) -> list[RunRecord]:
    """Runs best first by ``sort_by``; runs without that number last (in their given order)."""
    have = [r for r in records if r.metrics.get(sort_by) is not None]
    missing = [r for r in records if r.metrics.get(sort_by) is None]
    return sorted(have, key=lambda r: r.metrics[sort_by], reverse=larger_is_better) + missing


COLUMNS = ("best_val_top1", "best_epoch", "test_top1", "test_top5", "epochs_done", "train_min", "img_per_s", "status")


def comparison_table(records: Sequence[RunRecord], root: Path) -> tuple[list[str], list[list[Any]], list[str]]:
    """Headers, rows (in the records' order) and the differing flags: one row per run with its path
    under ``root``, the value of each differing flag, the metrics (``COLUMNS``) and its status."""
    keys = differing_keys([r.config for r in records])
    headers = ["run", *keys, "best val top-1", "best epoch", "test top-1", "test top-5", "epochs", "train min",
               "train img/s", "status"]
    rows = []
    for r in records:
        m = r.metrics
        rows.append([_relative(r.path, root), *(format_value(r.config.get(k)) for k in keys),
                     _num(m["best_val_top1"], 2), m["best_epoch"], _num(m["test_top1"], 2), _num(m["test_top5"], 2),
                     f"{m['epochs_done']}/{m['epochs'] if m['epochs'] is not None else '?'}",
                     _num(m["train_min"], 2), _num(m["img_per_s"], 0), r.status])
    return headers, rows, keys


def _num(value: float | None, digits: int) -> str | None:
    return None if value is None else f"{value:.{digits}f}"


def _relative(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root)) or "."
    except ValueError:
        return str(path)


def common_root(paths: Sequence[Path]) -> Path:
    """The deepest folder holding every path (a run's parent when there is one run)."""
    if not paths:
        return Path.cwd()
    root = Path(os.path.commonpath([str(p) for p in paths]))
    return root.parent if len(paths) == 1 else root


def compare_runs(paths: Sequence[str | Path], out_dir: str | Path | None = None, sort_by: str = "best_val_top1",
                 larger_is_better: bool = True) -> dict[str, Any]:
    """Compare the runs under ``paths``: print nothing, write ``compare.md``, ``compare.csv`` and
    ``compare.png`` into ``out_dir`` and return the markdown table and the file paths. ``out_dir``
    defaults to the one folder given (when it is not a run itself), else the folder holding every run;
    runs are named by their path under it."""
    runs = find_runs(paths)
    if not runs:
        raise FileNotFoundError(f"--compare: no run directories (folders with a config.yaml) under "
                                f"{', '.join(map(str, paths))}")
    records = [read_run(p) for p in runs]
    single = Path(paths[0]).resolve() if len(paths) == 1 else None
    root = single if single is not None and single.is_dir() and single not in runs else common_root(runs)
    out = Path(out_dir) if out_dir is not None else root
    out.mkdir(parents=True, exist_ok=True)
    records = sort_runs(records, sort_by, larger_is_better)
    headers, rows, keys = comparison_table(records, root)
    table = format_table(headers, rows)
    write_text_atomic(out / "compare.md", f"Runs under {root}, best {sort_by} first.\n\n{table}\n")
    with atomic_write(out / "compare.csv", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(headers)
        writer.writerows([["" if v is None else v for v in row] for row in rows])
    plot_comparison(records, keys, out / "compare.png")
    return {"table": table, "markdown": str(out / "compare.md"), "csv": str(out / "compare.csv"),
            "plot": str(out / "compare.png"), "runs": len(records), "differing": keys,
            "best": str(records[0].path) if records[0].metrics.get(sort_by) is not None else None}


def plot_comparison(records: Sequence[RunRecord], keys: Sequence[str], path: Path) -> Path:
    """Val top-1 and train loss per epoch of every run on shared axes, each line labelled by the run's
    differing flags (the legend is left out beyond 20 runs: the table names them)."""
    from utils.plots import _pyplot, save_figure
    plt = _pyplot()
    fig, (acc, loss) = plt.subplots(1, 2, figsize=(12, 4.8))
    for r in records:
        epochs = [row["epoch"] + 1 for row in r.history]
        label = run_label(r, keys)
        acc.plot(epochs, [row.get("val_top1") for row in r.history], marker=".", label=label)
        loss.plot(epochs, [row.get("train_loss") for row in r.history], marker=".", label=label)
    acc.set(xlabel="epoch", ylabel="val top-1 (%)", title="validation top-1")
    loss.set(xlabel="epoch", ylabel="train loss", title="training loss")
    from matplotlib.ticker import MaxNLocator
    for ax in (acc, loss):
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if 0 < len(records) <= 20:
        loss.legend(fontsize=8, loc="best")
    fig.tight_layout()
    return save_figure(fig, path)
