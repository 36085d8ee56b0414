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

A multi-label run (``--multi_label``) is compared by mAP: its headline is ``val_map`` (the history's, what chose
its best.pth) and ``test_map`` / ``test_of1`` (the test summary), not top-1 (``headline_metric``). A table of
multi-label runs shows mAP columns instead of the top-1 ones and sorts by best val mAP; a table mixing both
kinds shows both groups of columns, each run filling its own (mAP and top-1 are not one number: they are
never put in one column), and sorts by ``--sort_by`` (default: best val top-1), the runs without that number
last, with a warning line.

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
import math
import os
import re
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Sequence

from config.saved import RunFolderError, read_config
from utils.atomic import atomic_write, write_text_atomic
from utils.eval_metric import eval_metric_of, rank_key
from utils.misc import FAILED_MARK
from utils.table import format_table

logger = logging.getLogger(__name__)

PRUNED_FILE = "PRUNED"
# Keys that never describe what a run trained (where it lives, how it was launched, the mode flags of
# config.MODES): not "differing flags", not HParams.
NOT_SETTINGS = frozenset({"tag", "output", "config", "resume", "overwrite", "no_progress", "local_rank",
                          "sort_by", "sweep_devices", "sweep_only", "trials", "study_storage", "max_variants",
                          "tracker", "log_interval",
                          "train", "evaluation", "knowledge", "make_curriculum", "lr_finder", "jit", "onnx", "openvino",
                           "predict", "average", "calibrate", "triton", "extract_features",
                           "visual_data", "visual_source", "flops", "throughput", "summary", "publish", "package",
                           "push_to_hub", "compare",
                          "sweep"})
# Folders a run search never enters: inside a run, or a tracker's store.
_SKIP_DIRS = frozenset({"checkpoints", "tensorboard", "export", "mlruns", "wandb", "__pycache__"})


@dataclass
class RunRecord:
    """What one run directory says about its run (read from its files; nothing is imported or loaded)."""
    path: Path
    config: dict[str, Any]
    history: list[dict[str, Any]] = field(default_factory=list)
    test: dict[str, Any] | None = None
    status: str = "interrupted"
    failure: str = ""

    @property
    def multi_label(self) -> bool:
        """Whether the run trained a multi-label model (its config's ``multi_label``, or mAP in its history)."""
        return self._metric_config["multi_label"]

    @cached_property
    def metrics(self) -> dict[str, Any]:
        """The comparison's numbers: the best epoch by the run's eval metric (``--eval_metric``, with the tie rule
        of best.pth: ``utils.eval_metric.rank_key``; 1-based), its value (``best_val``) and its val top-1
        (multi-label: its val mAP), test top-1/top-5 (multi-label: test mAP and OF1; the top-1 keys stay None, a
        multi-label top-1 is p@1), epochs done and planned (``epochs``: the run's --epochs), training minutes
        (the sum of the epochs' training time) and the median training img/s."""
        metric = eval_metric_of(self._metric_config)
        rows = [row for row in self.history if row.get(metric.row_key) is not None]
        best_row = min(rows, key=lambda row: rank_key(row, metric)) if rows else None
        speeds = sorted(row["img_per_s"] for row in self.history if row.get("img_per_s") is not None)
        test = self.test or {}
        multi = self.multi_label
        best = (lambda key: None if best_row is None else best_row.get(key))
        return {"best_val_top1": None if multi else best("val_top1"),
                "best_val_map": best("val_map") if multi else None,
                "eval_metric": metric.name, "best_val": best(metric.row_key),
                "best_epoch": None if best_row is None else best_row["epoch"] + 1,
                "test_top1": None if multi else test.get("test_top1"),
                "test_top5": None if multi else test.get("test_top5"),
                "test_map": test.get("test_map") if multi else None,
                "test_of1": test.get("test_of1") if multi else None,
                "epochs_done": len(self.history), "epochs": self.config.get("epochs"),
                "train_min": sum(row.get("time") or 0.0 for row in self.history) / 60 if self.history else None,
                "img_per_s": speeds[len(speeds) // 2] if speeds else None}

    @property
    def _metric_config(self) -> dict[str, Any]:
        """The config as ``eval_metric_of`` reads it: a run saved before --multi_label was recorded counts as
        multi-label when its history has mAP."""
        return {**self.config, "multi_label": self.config.get("multi_label") is True
                or any("val_map" in row for row in self.history)}

    @property
    def status_text(self) -> str:
        """The status as a table shows it: ``early-stopped at epoch E`` for a finished run that --patience
        stopped (its test summary's ``early_stopped_at``), else ``status``."""
        stopped = (self.test or {}).get("early_stopped_at")
        return f"early-stopped at epoch {stopped}" if self.status == "finished" and stopped else self.status


def headline_metric(config: dict[str, Any], history: Sequence[dict[str, Any]] = ()) -> str:
    """The history key a run is judged by: its ``--eval_metric``'s (``utils.eval_metric``), by default
    ``val_map`` for a multi-label run (``config["multi_label"]``, or mAP in its history), else ``val_top1``.
    The comparison's best epoch and a search's objective."""
    multi = config.get("multi_label") is True or any("val_map" in row for row in history)
    return eval_metric_of({**config, "multi_label": multi}).row_key


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


# The numbers of a history row and of the test result that the comparison reads.
_ROW_NUMBERS = ("val_top1", "val_map", "train_loss", "img_per_s", "time")
_TEST_NUMBERS = ("test_top1", "test_top5", "test_map", "test_of1")


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


def _tail_lines(path: Path, size: int = 4096) -> list[str]:
    """The non-empty lines of the last ``size`` bytes of a text file (none when there is no file)."""
    if not path.is_file():
        return []
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        f.seek(max(0, f.tell() - size))
        return [line for line in f.read().decode("utf-8", "replace").splitlines() if line.strip()]


def _last_line(path: Path, size: int = 4096) -> str:
    """The last non-empty line of a text file (read from its end), '' when there is none."""
    lines = _tail_lines(path, size)
    return lines[-1].strip() if lines else ""


# The line ``--log_interval`` writes every N steps (engine.step_log.step_line), as it follows the log's time stamp.
STEP_LINE = re.compile(r"epoch \d+/\d+  step \d+/\d+  loss .*")


def latest_step_line(log: Path) -> str:
    """The last ``--log_interval`` line in the tail of a run's ``log.txt`` ('' when there is none yet)."""
    for line in reversed(_tail_lines(log, 16384)):
        match = STEP_LINE.search(line)
        if match:
            return match.group(0)
    return ""


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


def run_labels(records: Sequence[RunRecord], keys: Sequence[str], root: Path | None = None,
               width: int = 44) -> list[str]:
    """One distinct legend label per run, saying what sets it apart: its values of the differing flags
    (``lr=0.1 batch_size=32``); a run that differs in no flag, or shares its values with another, gets the
    part of its folder path that differs from the others' (``(seed3/b)``), and the position in the table
    (``#7``) is the last resort. Long labels wrap at ``width`` characters, between ``key=value`` items; an
    item longer than that keeps its two ends (``data=/home/me/...ts/digits``)."""
    by_keys = [[_shorten(f"{k}={format_value(r.config.get(k))}", width) for k in keys] for r in records]
    folders = [_shorten(part, width) for part in
               distinct_parts([_relative(r.path, root) if root is not None else str(r.path) for r in records])]
    texts = [" ".join(items) for items in by_keys]
    labels = []
    for i, (items, text) in enumerate(zip(by_keys, texts)):
        if not text or texts.count(text) > 1:
            items = [*items, f"({folders[i]})" if items else folders[i]]
        labels.append(items)
    joined = [" ".join(items) for items in labels]
    for i, text in enumerate(joined):
        if joined.count(text) > 1:
            labels[i] = [f"#{i + 1}", *labels[i]]
    return [_wrap(items, width) for items in labels]


def distinct_parts(paths: Sequence[str]) -> list[str]:
    """Each path less the leading and trailing folders every path shares (``out/lr-0.1/resnet18`` and
    ``out/lr-0.2/resnet18`` -> ``lr-0.1``, ``lr-0.2``); a path left empty stays whole."""
    parts = [Path(p).parts for p in paths]
    if len(parts) < 2:
        return [Path(p).name or p for p in paths]
    shortest = min(map(len, parts))
    lead = next((i for i in range(shortest) if len({p[i] for p in parts}) > 1), shortest)
    trail = next((i for i in range(shortest - lead) if len({p[len(p) - 1 - i] for p in parts}) > 1), shortest - lead)
    return ["/".join(p[lead:len(p) - trail]) or path for p, path in zip(parts, paths)]


def _shorten(text: str, width: int) -> str:
    """``text`` when it fits ``width`` characters, else its two ends around '...'."""
    if len(text) <= width:
        return text
    head = (width - 3) // 2
    return text[:head] + "..." + text[len(text) - (width - 3 - head):]


def _wrap(items: Sequence[str], width: int) -> str:
    """``items`` joined by spaces, a new line where the next item would pass ``width`` characters."""
    lines: list[str] = []
    for item in items:
        if lines and len(lines[-1]) + 1 + len(item) <= width:
            lines[-1] += " " + item
        else:
            lines.append(item)
    return "\n".join(lines)


def sort_runs(records: Sequence[RunRecord], sort_by: str, larger_is_better: bool) -> list[RunRecord]:
    """Runs best first by ``sort_by``; runs without that number last (in their given order)."""
    have = [r for r in records if r.metrics.get(sort_by) is not None]
    missing = [r for r in records if r.metrics.get(sort_by) is None]
    return sorted(have, key=lambda r: r.metrics[sort_by], reverse=larger_is_better) + missing


# The metric columns of a table: (metrics key, header, digits); the top-1 group for single-label runs, the mAP
# group for multi-label ones (a table of both kinds shows both), then the columns of every run.
TOP1_COLUMNS = (("best_val_top1", "best val top-1", 2), ("best_epoch", "best epoch", None),
                ("test_top1", "test top-1", 2), ("test_top5", "test top-5", 2))
MAP_COLUMNS = (("best_val_map", "best val mAP", 2), ("best_epoch", "best epoch", None), ("test_map", "test mAP", 2),
               ("test_of1", "test OF1", 2))
# Shown when a run ranks its epochs by another --eval_metric than its kind's default (top-1, or mAP).
EVAL_METRIC_COLUMNS = (("eval_metric", "eval metric", None), ("best_val", "best val (eval metric)", 4))
RUN_COLUMNS = (("epochs_done", "epochs done", None), ("epochs", "epochs planned", None),
               ("train_min", "train min", 2), ("img_per_s", "train img/s", 0))
COLUMNS = tuple(key for key, _, _ in (*TOP1_COLUMNS, *RUN_COLUMNS)) + ("status",)
# The table's headers of COLUMNS (``epochs``: the run's --epochs, the epochs it was planned to train).
HEADERS = tuple(header for _, header, _ in (*TOP1_COLUMNS, *RUN_COLUMNS)) + ("status",)
# Differing flags a metric column already shows: no column of their own.
SHOWN_BY_METRICS = frozenset({"epochs"})


def metric_columns(records: Sequence[RunRecord]) -> list[tuple[str, str, int | None]]:
    """The metric columns of a table of ``records``: top-1 ones, mAP ones, or both (best epoch once)."""
    kinds = {r.multi_label for r in records}
    groups = [group for multi, group in ((False, TOP1_COLUMNS), (True, MAP_COLUMNS)) if multi in kinds]
    columns = [column for group in groups or [TOP1_COLUMNS] for column in group]
    if any(r.config.get("eval_metric") not in (None, "map" if r.multi_label else "top1") for r in records):
        columns += EVAL_METRIC_COLUMNS
    seen: set[str] = set()
    unique = [c for c in columns if not (c[0] in seen or seen.add(c[0]))]
    return unique + list(RUN_COLUMNS)


def comparison_table(records: Sequence[RunRecord], root: Path) -> tuple[list[str], list[list[Any]], list[str]]:
    """Headers (each one distinct), rows (in the records' order) and the differing flags: one row per run
    with its path under ``root``, the value of each differing flag, the metrics (``metric_columns``) and its
    status. A flag whose name is a metric's header gets a column named ``--flag``."""
    keys = differing_keys([r.config for r in records])
    flag_keys = [k for k in keys if k not in SHOWN_BY_METRICS]
    columns = metric_columns(records)
    taken = {"run", "status", *(header for _, header, _ in columns)}
    headers = ["run", *(f"--{k}" if k in taken else k for k in flag_keys), *(h for _, h, _ in columns), "status"]
    rows = []
    for r in records:
        m = r.metrics
        rows.append([_relative(r.path, root), *(format_value(r.config.get(k)) for k in flag_keys),
                     *(m[key] if digits is None else _num(m[key], digits) for key, _, digits in columns),
                     r.status_text])
    return headers, rows, keys


def default_sort_key(records: Sequence[RunRecord]) -> tuple[str, bool]:
    """What a table is sorted by when ``--sort_by`` is not given, and whether larger is better: the best val of
    the runs' eval metric when they all share one other than their default (``best_val``; lower is better for
    val_loss), else best val mAP when every run is multi-label, else best val top-1."""
    metrics = {eval_metric_of(r._metric_config) for r in records}
    if len(metrics) == 1 and any(r.config.get("eval_metric") for r in records):
        metric = metrics.pop()
        if metric.name not in ("top1", "map"):
            return "best_val", metric.higher_is_better
    return ("best_val_map" if records and all(r.multi_label for r in records) else "best_val_top1"), True


def _best_val_direction(records: Sequence[RunRecord]) -> bool:
    """Whether a larger ``best_val`` is better: that of the runs' eval metric (a warning when they differ:
    their best vals are not one measure)."""
    metrics = {eval_metric_of(r._metric_config) for r in records}
    if len(metrics) > 1:
        logger.warning("--sort_by best_val: the runs rank their epochs by different eval metrics (%s): their best "
                       "vals are not comparable", ", ".join(sorted(m.name for m in metrics)))
    return all(m.higher_is_better for m in metrics)


def _warn_if_mixed(records: Sequence[RunRecord], sort_by: str) -> None:
    multi = sum(r.multi_label for r in records)
    if 0 < multi < len(records):
        other = "best_val_map" if sort_by != "best_val_map" else "best_val_top1"
        logger.warning("%d multi-label and %d single-label runs: mAP and top-1 are not comparable, each kind fills "
                       "its own columns; sorted by %s, the runs without it last (--sort_by %s sorts the others)",
                       multi, len(records) - multi, sort_by, other)


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


def compare_runs(paths: Sequence[str | Path], out_dir: str | Path | None = None, sort_by: str | None = None,
                 larger_is_better: bool = True) -> dict[str, Any]:
    """Compare the runs under ``paths``: print nothing, write ``compare.md``, ``compare.csv`` and
    ``compare.png`` into ``out_dir`` and return the markdown table and the file paths. ``sort_by`` None:
    ``default_sort_key`` (mAP for multi-label runs, larger is better). ``out_dir``
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
    if sort_by is None:
        sort_by, larger_is_better = default_sort_key(records)
    elif sort_by == "best_val":
        larger_is_better = _best_val_direction(records)
    _warn_if_mixed(records, sort_by)
    records = sort_runs(records, sort_by, larger_is_better)
    headers, rows, keys = comparison_table(records, root)
    table = format_table(headers, rows)
    write_text_atomic(out / "compare.md", f"Runs under {root}, best {sort_by} first.\n\n{table}\n")
    with atomic_write(out / "compare.csv", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(headers)
        writer.writerows([["" if v is None else v for v in row] for row in rows])
    plot_comparison(records, keys, out / "compare.png", root)
    return {"table": table, "markdown": str(out / "compare.md"), "csv": str(out / "compare.csv"),
            "plot": str(out / "compare.png"), "runs": len(records), "differing": keys, "sort_by": sort_by,
            "best": str(records[0].path) if records[0].metrics.get(sort_by) is not None else None}


# Line styles of the runs' curves: ten colours, then four line styles, then markers (280 distinct).
_COLOURS = "tab10"
_LINESTYLES = ("-", "--", ":", "-.")
_MARKERS = (".", "o", "s", "^", "v", "D", "x")


def line_style(i: int) -> dict[str, Any]:
    """The colour, line style and marker of the ``i``-th run's curves: distinct for 280 runs."""
    from matplotlib import colormaps
    colours = colormaps[_COLOURS].colors
    n = len(colours) * len(_LINESTYLES)
    return {"color": colours[i % len(colours)], "linestyle": _LINESTYLES[i // len(colours) % len(_LINESTYLES)],
            "marker": _MARKERS[i // n % len(_MARKERS)]}


def _plottable(values: Sequence[Any], positive: bool = False) -> list[float]:
    """``values`` as floats, with None, nan, inf (and, for a log axis, values <= 0) as nan: a gap."""
    out = []
    for v in values:
        ok = isinstance(v, (int, float)) and math.isfinite(v) and (v > 0 or not positive)
        out.append(float(v) if ok else math.nan)
    return out


def comparison_figure(records: Sequence[RunRecord], keys: Sequence[str], root: Path | None = None):
    """The matplotlib Figure of the comparison: val top-1 (mAP for a multi-label run; linear) and train loss
    (log axis, so one diverged run does not flatten the others; values that are not finite or not > 0 are gaps)
    per epoch of every run, each run in its own ``line_style``, and below the two plots a legend of every run,
    labelled by what sets it apart (``run_labels``), in the table's order."""
    from matplotlib.ticker import MaxNLocator

    from utils.plots import _pyplot
    plt = _pyplot()
    labels = run_labels(records, keys, root)
    # The legend fills its columns one after the other: as many as fit 11 inches of 8-point text, and the
    # figure grows by the tallest column's height (0.19 in an entry, 0.135 in each more line).
    widest = max((len(line) for label in labels for line in label.splitlines()), default=1)
    ncol = max(1, min(len(labels), int(11.0 // (widest * 0.065 + 0.8))))
    per_col = -(-len(labels) // ncol) if labels else 0
    height = max((sum(0.19 + 0.135 * label.count("\n") for label in labels[c:c + per_col])
                  for c in range(0, len(labels), per_col or 1)), default=0.0)
    fig = plt.figure(figsize=(12, 4.8 + height + 0.4), layout="constrained")
    acc, loss = fig.subplots(1, 2)
    any_loss = False
    for i, (r, label) in enumerate(zip(records, labels)):
        epochs = [row["epoch"] + 1 for row in r.history]
        style = {**line_style(i), "markersize": 4, "linewidth": 1.4}
        key = headline_metric(r.config, r.history)
        acc.plot(epochs, _plottable([row.get(key) for row in r.history]), label=label, **style)
        losses = _plottable([row.get("train_loss") for row in r.history], positive=True)
        any_loss = any_loss or any(math.isfinite(v) for v in losses)
        loss.plot(epochs, losses, label=label, **style)
    name = {frozenset({False}): "top-1", frozenset({True}): "mAP"}.get(frozenset(r.multi_label for r in records),
                                                                       "top-1 or mAP (multi-label runs)")
    acc.set(xlabel="epoch", ylabel=f"val {name} (%)", title=f"validation {name}")
    loss.set(xlabel="epoch", ylabel="train loss (log scale)", title="training loss")
    if any_loss:  # a log axis needs a value > 0 to scale to
        loss.set_yscale("log")
    for ax in (acc, loss):
        ax.grid(alpha=0.3, which="both")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if labels:
        fig.legend(*acc.get_legend_handles_labels(), loc="outside lower center", ncol=ncol, fontsize=8,
                   title=f"{len(labels)} runs, in the table's order", title_fontsize=8)
    return fig


def plot_comparison(records: Sequence[RunRecord], keys: Sequence[str], path: Path, root: Path | None = None) -> Path:
    """Write ``comparison_figure`` to ``path``."""
    from utils.plots import save_figure
    return save_figure(comparison_figure(records, keys, root), path)
