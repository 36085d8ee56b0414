"""--compare's picture and table stay readable over many runs (#26): each run labelled by what sets it apart,
a distinct line style per run, the legend outside the plots and never dropped, the loss on a log axis that a
diverged run (nan, inf, huge) does not break, and no two columns with the same name. The Figure is inspected,
not its pixels."""
from __future__ import annotations

import csv
import itertools
import math
from pathlib import Path

from experiments.runs import compare_runs, comparison_figure, differing_keys, distinct_parts, read_run, run_labels
from helpers import write_run


def history(losses, vals=None) -> list[dict]:
    vals = vals or [50.0 + i for i in range(len(losses))]
    return [{"epoch": i, "train_loss": loss, "val_top1": val, "img_per_s": 100.0, "time": 3.0}
            for i, (loss, val) in enumerate(zip(losses, vals))]


def thirty_runs(root: Path) -> Path:
    """30 runs of a grid over lr x batch_size x seed, in folders that share a long prefix."""
    grid = itertools.product((0.01, 0.03, 0.1, 0.3, 1.0), (16, 32, 64), (0, 1))
    for i, (lr, bs, seed) in enumerate(grid):
        tag = f"experiment_2026_resnet18_digits_lr{lr}_bs{bs}_seed{seed}"
        config = {"arch": "resnet18", "lr": lr, "batch_size": bs, "seed": seed, "epochs": 4, "tag": tag}
        write_run(root / "resnet18" / tag, config, history([2.0 / (e + 1 + i) for e in range(4)]),
                  {"test_top1": 50.0 + i})
    return root


def records(root: Path):
    found = sorted(p.parent for p in root.rglob("config.yaml"))
    return [read_run(p) for p in found]


def test_thirty_runs_each_have_a_distinct_style_and_a_label_naming_their_values(tmp_path):
    root = thirty_runs(tmp_path / "runs")
    result = compare_runs([root])
    assert Path(result["plot"]).is_file() and result["runs"] == 30
    runs = records(root)
    keys = differing_keys([r.config for r in runs])
    assert keys == ["batch_size", "lr", "seed"]
    fig = comparison_figure(runs, keys, root)
    assert len(fig.legends) == 1
    legend = fig.legends[0]
    labels = [t.get_text() for t in legend.get_texts()]
    assert len(labels) == 30 and len(set(labels)) == 30
    for r, label in zip(runs, labels):
        words = label.split()
        assert (f"lr={r.config['lr']:g}" in words and f"batch_size={r.config['batch_size']}" in words
                and f"seed={r.config['seed']}" in words), label
    styles = {(line.get_color(), line.get_linestyle(), line.get_marker()) for line in legend.get_lines()}
    assert len(styles) == 30
    acc, loss = fig.axes
    assert loss.get_yscale() == "log" and acc.get_yscale() == "linear"
    assert [(line.get_color(), line.get_linestyle()) for line in acc.get_lines()] == \
        [(line.get_color(), line.get_linestyle()) for line in loss.get_lines()]
    # the legend lies outside both plots, inside the figure
    fig.canvas.draw()
    box = legend.get_window_extent()
    for ax in (acc, loss):
        assert not box.overlaps(ax.get_window_extent()), "the legend covers a plot"
    assert fig.bbox.contains(box.x0, box.y0) and fig.bbox.contains(box.x1, box.y1)


def test_a_diverged_run_does_not_break_the_log_axis(tmp_path):
    root = tmp_path / "runs"
    write_run(root / "good", {"lr": 0.1, "tag": "good"}, history([1.0, 0.5, 0.25]))
    write_run(root / "diverged", {"lr": 10.0, "tag": "diverged"},
              history([1.0, 1e9, math.inf, math.nan, 0.0, -1.0], [50.0, math.nan, math.inf, 10.0, 10.0, 10.0]))
    write_run(root / "no_loss", {"lr": 1.0, "tag": "no_loss"}, history([None, None]))
    result = compare_runs([root])  # NaN and Infinity in metrics.json (as Python's json writes them)
    assert Path(result["plot"]).is_file() and result["runs"] == 3
    runs = records(root)
    fig = comparison_figure(runs, ["lr"], root)
    acc, loss = fig.axes
    assert loss.get_yscale() == "log"
    fig.canvas.draw()
    low, high = loss.get_ylim()
    assert 0 < low <= 0.25 and 1e9 <= high < 1e11  # the good run's decade is on the axis, nothing infinite
    assert all(map(math.isfinite, acc.get_ylim()))
    only_bad = tmp_path / "bad"
    write_run(only_bad / "a", {"lr": 10.0, "tag": "a"}, history([math.nan, -1.0]))
    assert Path(compare_runs([only_bad])["plot"]).is_file()  # no positive loss at all: still a picture


def test_runs_that_differ_in_no_flag_are_labelled_by_the_part_of_their_folder_that_differs(tmp_path):
    root = tmp_path / "runs"
    for name in ("attempt_first", "attempt_second"):
        write_run(root / name / "resnet18" / "baseline", {"lr": 0.1, "tag": "baseline"}, history([1.0]))
    write_run(root / "other" / "resnet18" / "x", {"lr": 0.2, "tag": "x"}, history([1.0]))
    runs = records(root)
    labels = run_labels(runs, differing_keys([r.config for r in runs]), root)
    assert labels == ["lr=0.1 (attempt_first/resnet18/baseline)", "lr=0.1 (attempt_second/resnet18/baseline)",
                      "lr=0.2"]
    assert run_labels(runs[:2], [], root) == ["attempt_first", "attempt_second"]
    assert distinct_parts(["out/lr-0.1/resnet18", "out/lr-0.2/resnet18"]) == ["lr-0.1", "lr-0.2"]
    long = run_labels(runs[:1], ["data"], root, width=20)
    assert long == ["data=-"]
    runs[0].config["data"] = "/home/someone/datasets/very/long/path/digits"
    assert run_labels(runs[:1], ["data"], root, width=20) == ["data=/ho...th/digits"]  # both ends kept


def test_no_two_columns_have_the_same_name(tmp_path):
    """--epochs differs: the flag's value is the 'epochs planned' column, beside 'epochs done'; a flag named
    like a metric column gets a column named --flag."""
    root = tmp_path / "runs"
    write_run(root / "short", {"lr": 0.1, "epochs": 2, "tag": "short", "status": "x"}, history([1.0, 0.5]),
              {"test_top1": 60.0})
    write_run(root / "long", {"lr": 0.2, "epochs": 5, "tag": "long", "status": "y"}, history([1.0]))
    result = compare_runs([root])
    with open(result["csv"], newline="") as f:
        rows = list(csv.DictReader(f))
    with open(result["csv"], newline="") as f:
        header = next(csv.reader(f))
    assert len(header) == len(set(header)), header
    assert header == ["run", "lr", "--status", "best val top-1", "best epoch", "test top-1", "test top-5",
                      "epochs done", "epochs planned", "train min", "train img/s", "status"]
    by_run = {row["run"]: row for row in rows}
    assert (by_run["short"]["epochs done"], by_run["short"]["epochs planned"]) == ("2", "2")
    assert (by_run["long"]["epochs done"], by_run["long"]["epochs planned"]) == ("1", "5")
    assert by_run["long"]["status"] == "interrupted" and by_run["long"]["--status"] == "y"
    md_header = [c.strip() for c in result["table"].splitlines()[0].split("|")[1:-1]]
    assert md_header == header
    assert result["differing"] == ["epochs", "lr", "status"]
