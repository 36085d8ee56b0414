"""Reading run directories without torch: each run's flags, history and status, and the comparison of
many runs (the flags that differ, the metrics, a plot of their curves) that ``--compare`` and
``--sweep`` print and write.

A run directory is a folder holding ``config.yaml`` (written when a training run starts); its
``metrics.json`` gains one history row per epoch and the ``test`` summary when the run finishes.
Its status is read from those files and the last line of its ``log.txt``:

- ``finished``: ``metrics.json`` has the test result, written after every other output of the run's final
  step (:func:`missing_outputs` lists those that are gone since; rerunning the run's command, or the
  sweep, writes them again);
- ``failed``: it has not, and the log's last line is the ``run failed: ...`` line that the log writes when
  a run ends with an error (``utils.misc.log_to_file``);
- ``pruned``: it has not, and a search stopped it as hopeless (the sweep writes the file ``PRUNED``);
- ``interrupted``: anything else: stopped by a signal, killed, or still running. Rerunning its command
  resumes it.

A run directory whose files cannot be read as a run's (a damaged or unreadable ``config.yaml``, a
``metrics.json`` of another shape, a history row without its epoch, a metric that is not a number) is a
``RunFolderError`` naming the file and what is wrong: ``--compare`` skips that run with one warning line,
and a sweep does not reuse it (``readable_run``).
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
                "train_min": sum(row.get("time") or 0.0 for row in self.history) / 60 if self.history else None,
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


class RunFolderError(ValueError):
    """A file of a run directory that cannot be read as a run's: ``path`` names the file, ``problem`` says
    what is wrong with it (one line)."""

    def __init__(self, path: str | Path, problem: str) -> None:
        self.path, self.problem = Path(path), problem
        super().__init__(f"{path}: {problem}")


def read_run(path: Path) -> RunRecord:
    """The flags, history, test result and status of the run in ``path``; a file that cannot be read
    (or read as a run's) is a ``RunFolderError`` naming it."""
    try:
        config = read_config(path / "config.yaml")
        history, test = read_metrics(path / "metrics.json")
        last = _last_line(path / "log.txt")
        pruned = (path / PRUNED_FILE).is_file()
    except OSError as e:  # unreadable, a link to itself, a folder where a file should be, ...
        raise RunFolderError(e.filename or path, f"it cannot be read ({e.strerror or e})") from None
    record = RunRecord(path, config, history, test)
    if record.test is not None:
        record.status = "finished"
    elif FAILED_MARK in last:
        record.status, record.failure = "failed", last.split(FAILED_MARK, 1)[1]
    elif pruned:
        record.status = "pruned"
    return record


def readable_run(path: Path) -> RunRecord | None:
    """The run in ``path`` as a sweep sees it: None when there is none, or when its files cannot be read
    (one warning line naming the file: the sweep does not reuse it, the variant runs again)."""
    if not os.path.lexists(path / "config.yaml"):
        return None
    try:
        return read_run(path)
    except RunFolderError as e:
        logger.warning("%s; the run there is not reused as finished: it runs again", e)
        return None


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


# The numbers of a history row and of the test result that the comparison reads.
_ROW_NUMBERS = ("val_top1", "train_loss", "img_per_s", "time")
_TEST_NUMBERS = ("test_top1", "test_top5")


def read_metrics(path: Path) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """The history rows and the test result (None until the run finished) of a run's ``metrics.json``;
    none yet when there is no file. A file that is not JSON, not a mapping, a row without its ``epoch``
    or a metric that is not a number is a ``RunFolderError``; an OSError (cannot open) passes through."""
    if not os.path.lexists(path):
        return [], None
    try:
        metrics = json.loads(path.read_bytes())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise RunFolderError(path, f"it is not valid JSON ({' '.join(str(e).split())[:200]})") from None
    if not isinstance(metrics, dict):
        raise RunFolderError(path, f"it holds a {type(metrics).__name__}, not a mapping with the run's history")
    history, test = metrics.get("history", []), metrics.get("test")
    if not isinstance(history, list):
        raise RunFolderError(path, f"its history is a {type(history).__name__}, not a list of rows")
    for i, row in enumerate(history, 1):
        if not isinstance(row, dict):
            raise RunFolderError(path, f"history row {i} is a {type(row).__name__}, not a mapping")
        if "epoch" not in row:
            raise RunFolderError(path, f"history row {i} has no epoch")
        if not _is_int(row["epoch"]) or row["epoch"] < 0:
            raise RunFolderError(path, f"history row {i}: epoch is {row['epoch']!r}, not an epoch number")
        _check_numbers(path, row, _ROW_NUMBERS, f"history row {i}")
    if test is not None:
        if not isinstance(test, dict):
            raise RunFolderError(path, f"its test result is a {type(test).__name__}, not a mapping")
        _check_numbers(path, test, _TEST_NUMBERS, "the test result")
    return history, test


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_numbers(path: Path, row: dict[str, Any], keys: Sequence[str], where: str) -> None:
    for key in keys:
        value = row.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise RunFolderError(path, f"{where}: {key} is {value!r}, not a number")


def missing_outputs(path: Path, record: RunRecord) -> list[str]:
    """The files that the final step of the run in ``path`` writes (``applications/train.py``: the test split's
    report and curves.png) and that are not there."""
    split = record.test.get("test_split", "test") if isinstance(record.test, dict) else "test"
    wanted = [f"eval_{split}/metrics.json", f"eval_{split}/confusion_matrix.png"]
    if record.history:
        wanted.append("curves.png")
    return [name for name in wanted if not (path / name).is_file()]


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
    records, unreadable = [], []
    for p in runs:
        try:
            records.append(read_run(p))
        except RunFolderError as e:
            unreadable.append(e)
    if not records and len(unreadable) == 1:
        raise ValueError(f"--compare: {unreadable[0]}; fix or delete that file") from None
    for e in unreadable:
        logger.warning("--compare: skipped a run: %s; fix or delete that file to compare it", e)
    if not records:
        raise ValueError(f"--compare: none of the {len(runs)} run directories found can be read (the warnings "
                         f"above name each file); fix or delete those files")
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
