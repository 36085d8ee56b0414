"""Experiments: --compare over run directories, HParams in every run's events, --tracker mlflow, and
--sweep (grid, named variants, Optuna search) as real processes on the tiny digits."""
from __future__ import annotations

import logging

import pytest
import yaml

from config import ConfigError
from helpers import main_process, sweep_file, write_run


def epoch_row(epoch: int, val: float, loss: float = 1.0) -> dict:
    return {"epoch": epoch, "train_loss": loss, "val_top1": val, "img_per_s": 100.0 + epoch, "time": 30.0}


def test_compare_edge_cases_failed_unfinished_and_list_flags(tmp_path):
    base = {"arch": "resnet18", "lr": 0.1, "epochs": 3, "image_size": [16, 16], "output": "x"}
    write_run(tmp_path / "runs/done", {**base, "tag": "done"},
              [epoch_row(0, 50.0), epoch_row(1, 80.0), epoch_row(2, 70.0)], {"test_top1": 75.0, "test_top5": 99.0})
    write_run(tmp_path / "runs/failed", {**base, "tag": "failed"}, [epoch_row(0, 60.0)],
              log="2026-01-01 10:00:00 INFO x: epoch 1/3\n"
                  "2026-01-01 10:00:05 ERROR run: run failed: FloatingPointError: the loss became nan\n")
    write_run(tmp_path / "runs/stopped", {**base, "tag": "stopped", "image_size": [32, 32]},
              [epoch_row(0, 90.0)], log="2026-01-01 10:00:05 WARNING x: stopped at epoch 2, batch 1\n")
    write_run(tmp_path / "runs/nothing_yet", {**base, "tag": "nothing_yet"})  # config.yaml only
    r = main_process("--compare", str(tmp_path / "runs"))
    assert r.returncode == 0, r.stderr[-2000:]
    lines = [line.split("|")[1:-1] for line in r.stdout.splitlines() if line.startswith("| ")]
    header, rows = [c.strip() for c in lines[0]], [[c.strip() for c in row] for row in lines[1:]]
    assert header[:2] == ["run", "image_size"]  # the list-valued flag is the one that differs
    table = {row[0]: dict(zip(header, row)) for row in rows}
    assert [row[0] for row in rows] == ["stopped", "done", "failed", "nothing_yet"]  # by best val, no number last
    assert table["stopped"]["image_size"] == "32 32" and table["done"]["image_size"] == "16 16"
    assert table["done"]["status"] == "finished" and table["done"]["best epoch"] == "2"
    assert table["done"]["test top-1"] == "75.00" and table["done"]["epochs done"] == "3"
    assert table["done"]["epochs planned"] == "3" and table["failed"]["epochs done"] == "1"
    assert table["done"]["train min"] == "1.50" and table["done"]["train img/s"] == "101"
    assert table["failed"]["status"] == "failed" and table["failed"]["test top-1"] == ""
    assert table["stopped"]["status"] == "interrupted" and table["nothing_yet"]["status"] == "interrupted"
    r = main_process("--compare", str(tmp_path / "runs/*"), "--sort_by", "test_top1")
    assert r.returncode == 0 and r.stdout.splitlines()[2].startswith("| done ")


def test_mode_flags_are_not_settings():
    from config import MODES
    from experiments.runs import NOT_SETTINGS
    assert set(MODES) <= NOT_SETTINGS


def test_compare_refuses_a_missing_path(tmp_path):
    r = main_process("--compare", str(tmp_path / "nope"))
    assert r.returncode == 1 and "--compare:" in r.stderr and "does not exist" in r.stderr


def test_a_run_ending_in_an_error_says_so_in_its_log(tmp_path):
    """log_to_file ends the log with the error (--compare's 'failed'); a finished run's log does not."""
    from experiments.runs import read_run
    from utils.misc import FAILED_MARK, log_to_file
    run = write_run(tmp_path / "run", {"tag": "run"}, [epoch_row(0, 10.0)])
    with pytest.raises(ValueError), log_to_file(run / "log.txt"):
        raise ValueError("bad thing")
    assert (run / "log.txt").read_text().strip().endswith(f"{FAILED_MARK}ValueError: bad thing")
    assert read_run(run).status == "failed" and read_run(run).failure == "ValueError: bad thing"
    with log_to_file(run / "log.txt"):
        import logging
        logging.getLogger("x").warning("resumed")
    assert read_run(run).status == "interrupted"


# ---- sweep files -----------------------------------------------------------------------------------


def test_grid_expands_to_tagged_variants(tmp_path):
    from experiments.sweep_plan import load_sweep
    spec = load_sweep(sweep_file(tmp_path, {"base": {"epochs": 2}, "grid": {
        "lr": [0.05, 0.1], "arch": ["resnet18", "timm/resnet18"], "ghm_loss": [True, False],
        "image_size": [[16, 16], [32, 32]]}}))
    assert spec.name == "sweep" and spec.base == {"epochs": 2} and len(spec.variants) == 16
    first = spec.variants[0]
    assert first.values == {"lr": 0.05, "arch": "resnet18", "ghm_loss": True, "image_size": [16, 16]}
    assert first.tag == "lr-0.05_arch-resnet18_ghm_loss-true_image_size-16-16"
    assert spec.variants[4].tag.startswith("lr-0.05_arch-timm-resnet18")
    assert len({v.tag for v in spec.variants}) == 16


@pytest.mark.parametrize("body, message", [
    ({"grid": {"lr": [0.1]}, "variants": {"a": {}}},
     r"exactly one of grid:, variants:, search: \(found grid, variants"),
    ({"grid": {"lrr": [0.1]}}, r"grid: unknown key 'lrr' \(did you mean lr"),
    ({"grid": {"lr": 0.1}}, r"grid: lr: expected a list of values to try"),
    ({"grid": {"optimizer": ["sgd", "adamm"]}}, r"key 'optimizer' \(flag --optimizer\) has invalid value 'adamm'"),
    ({"variants": {"a b": {"lr": 0.1}}}, r"variant name 'a b' becomes a run tag.*'a-b'"),
    ({"search": {"lr": {"low": 0.3, "high": 0.001}}}, r"search: lr: need low < high"),
    ({"search": {"optimizer": {"low": 1, "high": 2}}}, r"search: optimizer: a range needs a number flag"),
    ({"grid": {"lr": [0.1]}, "trials": 3}, r"trials: is a search option"),
    ({"grid": {"lr": [0.1]}, "gird": 1}, r"unknown key\(s\) \['gird'\]"),
    ({"search": {"lr": {"low": 0.001, "high": float("inf")}}, "trials": 2}, r"search: lr: low and high must be finite"),
    ({"search": {"lr": {"low": 0.001, "high": 0.1, "step": 0}}, "trials": 2}, r"search: lr: .*step .*> 0"),
    ({"search": {"lr": [0.1]}, "trials": 2, "sampler_seed": [1, 2]}, r"sampler_seed: expected an integer >= 0"),
    ({"search": {"lr": [0.1]}, "trials": 2, "pruning": {"warmup_epochs": [1]}},
     r"pruning: warmup_epochs: expected an integer >= 0, got \[1\]"),
    ({"grid": {"lr": [None]}}, r"grid: lr: key 'lr' \(flag --lr\) has invalid value None: expected a number"),
    ({"search": {"lr": [0.1, None]}, "trials": 2},
     r"search: lr: key 'lr' \(flag --lr\) has invalid value None: expected a number"),
    ({"base": {"epochs": None}, "grid": {"lr": [0.1]}},
     r"base: key 'epochs' \(flag --epochs\) has invalid value None: expected an integer"),
    ({"variants": {"a": {"lr": None}}},
     r"variants: a: key 'lr' \(flag --lr\) has invalid value None: expected a number"),
    ({"variants": {"-x": {}}}, r"variant name '-x' becomes a run tag: .*not starting with '-'"),
])
def test_bad_sweep_files_are_refused_clearly(tmp_path, body, message):
    import re

    from experiments.sweep_plan import load_sweep
    with pytest.raises(ConfigError) as e:
        load_sweep(sweep_file(tmp_path, body))
    assert re.search(message, str(e.value)), str(e.value)
    assert str(e.value).startswith(f"--sweep: {tmp_path / 'sweep.yaml'}") or "sweep.yaml" in str(e.value)


def test_a_grid_over_the_limit_is_refused_before_it_is_expanded(tmp_path):
    """10^6 combinations are counted, not made (they once ended in MemoryError); the limit can be raised."""
    from experiments.sweep_plan import load_sweep
    grid = {key: list(range(1, 11)) for key in ("epochs", "batch_size", "workers", "seed", "lr", "momentum")}
    with pytest.raises(ConfigError) as e:
        load_sweep(sweep_file(tmp_path, {"grid": grid}))
    assert "1000000 combinations (10 x 10 x 10 x 10 x 10 x 10) are more than the limit of 1000" in str(e.value)
    assert "--max_variants 1000000" in str(e.value) and len(str(e.value)) < 400
    small = {"epochs": [1, 2, 3], "seed": [1, 2]}
    assert len(load_sweep(sweep_file(tmp_path, {"grid": small}), max_variants=6).variants) == 6
    with pytest.raises(ConfigError, match="6 combinations"):
        load_sweep(sweep_file(tmp_path, {"grid": small}), max_variants=5)


def test_long_tag_lists_are_cut():
    from experiments.sweep_plan import cut_list
    assert cut_list(["a", "b"]) == "a, b"
    assert cut_list([f"t{i}" for i in range(100_000)], 3) == "t0, t1, t2, ... and 99997 more"


def test_run_flags_layering_and_checks(tmp_path):
    """base < flags next to --sweep < the variant's own values; a bad combination is refused up front."""
    from applications.sweep import command_line_flags, run_flags
    from config import parse_config
    cfg = parse_config(["--sweep", str(sweep_file(tmp_path, {"grid": {"lr": [0.1]}})), "--epochs", "3",
                        "--label_smoothing", "0.2", "--sweep_devices", "0,1", "--tracker", "mlflow"])
    given = command_line_flags(cfg)
    assert given == {"epochs": 3, "label_smoothing": 0.2, "tracker": "mlflow"}
    given.pop("tracker")
    flags = run_flags({"epochs": 5, "optimizer": "adamw", **given}, {"label_smoothing": 0.3}, tmp_path, "t")
    assert flags == {"epochs": 3, "optimizer": "adamw", "label_smoothing": 0.3, "output": str(tmp_path),
                     "tag": "t", "no_progress": True}
    with pytest.raises(ConfigError, match=r"--sweep: variant t: --warmup \(5.0 epochs\) must be shorter"):
        run_flags({"epochs": 3}, {"warmup": 5.0}, tmp_path, "t")


def test_device_slots():
    from experiments.sweep_plan import device_flags_env, parse_devices
    assert parse_devices("0, 1,cpu") == ["0", "1", "cpu"] and parse_devices(None) == [None]
    assert device_flags_env("1") == ({"device": "cuda"}, {"CUDA_VISIBLE_DEVICES": "1"})
    assert device_flags_env("cpu") == ({"device": "cpu"}, {"CUDA_VISIBLE_DEVICES": ""})
    assert device_flags_env(None) == ({}, {})


def test_search_folders_round_floats_and_stay_distinct(tmp_path):
    """A trial's folder name carries its floats to 4 significant digits (its config the exact values); a trial
    whose values round alike to another's, or to a run already in the folder, gets the next free suffix; a
    trial asked again with an earlier trial's params gets that trial's folder (its run resumes)."""
    import optuna

    from applications.sweep import _trial_flags
    from experiments.sweep_plan import variant_tag
    assert variant_tag({"lr": 0.022881136684755242, "optimizer": "sgd"}, digits=4) == "lr-0.02288_optimizer-sgd"
    assert variant_tag({"lr": 0.022881136684755242}) == "lr-0.022881136684755242"  # grids keep exact tags
    assert variant_tag({"lr": 12345.678, "image_size": [16, 16]}, digits=4) == "lr-1.235e04_image_size-16-16"
    assert variant_tag({"lr": 0.00012345678}, digits=4) == "lr-0.0001235"
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize")
    distributions = {"lr": optuna.distributions.FloatDistribution(1e-4, 0.5, log=True)}
    exact = (0.022881136684755242, 0.02288119, 0.2, 0.022881136684755242)
    (tmp_path / "resnet18/lr-0.2").mkdir(parents=True)  # a run of other values (a study moved away) holds lr-0.2
    (tmp_path / "resnet18/lr-0.2/config.yaml").write_text(yaml.safe_dump({"lr": 0.2000001, "tag": "lr-0.2"}))
    tags = []
    for lr in exact:
        study.enqueue_trial({"lr": lr})
        trial = study.ask(distributions)
        flags = _trial_flags(study, trial, {"lr": trial.params["lr"]}, {"epochs": 2}, tmp_path)
        trial.set_user_attr("run_dir", str(tmp_path / "resnet18" / flags["tag"]))
        assert flags["lr"] == lr  # the run gets the exact value
        tags.append(flags["tag"])
    assert tags == ["lr-0.02288", "lr-0.02288-2", "lr-0.2-2", "lr-0.02288"]


def ml_row(epoch: int, p_at_1: float, val_map: float) -> dict:
    return {**epoch_row(epoch, p_at_1), "val_map": val_map, "val_of1": val_map - 5, "val_cf1": val_map - 6}


def read_table(path) -> tuple[list[str], dict[str, dict[str, str]], list[str]]:
    import csv
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    return rows[0], {row[0]: dict(zip(rows[0], row)) for row in rows[1:]}, [row[0] for row in rows[1:]]


def test_multi_label_runs_are_compared_and_sorted_by_map(tmp_path):
    from experiments.runs import compare_runs
    base = {"arch": "resnet18", "epochs": 2, "multi_label": True, "criterion": "bce"}
    # p@1 ranks them a > b, mAP b > a: the table must follow mAP
    write_run(tmp_path / "runs/a", {**base, "lr": 0.1}, [ml_row(0, 90.0, 40.0), ml_row(1, 95.0, 45.0)],
              {"test_top1": 93.0, "test_top5": 99.0, "best_val_top1": 45.0, "best_val_map": 45.0, "test_map": 44.0,
               "test_of1": 41.0, "test_cf1": 39.0})
    write_run(tmp_path / "runs/b", {**base, "lr": 0.2}, [ml_row(0, 80.0, 70.0), ml_row(1, 85.0, 60.0)],
              {"test_top1": 83.0, "test_top5": 97.0, "best_val_top1": 70.0, "best_val_map": 70.0, "test_map": 68.5,
               "test_of1": 66.0, "test_cf1": 64.0})
    result = compare_runs([tmp_path / "runs"])
    header, table, order = read_table(result["csv"])
    assert result["sort_by"] == "best_val_map" and order == ["b", "a"] and result["best"].endswith("b")
    assert "best val top-1" not in header and "test top-1" not in header
    assert header[header.index("best val mAP"):header.index("best val mAP") + 4] == [
        "best val mAP", "best epoch", "test mAP", "test OF1"]
    assert table["b"]["best val mAP"] == "70.00" and table["b"]["best epoch"] == "1"  # mAP's best, not p@1's
    assert table["a"]["best epoch"] == "2" and table["a"]["test mAP"] == "44.00" and table["a"]["test OF1"] == "41.00"
    with open(result["markdown"]) as f:
        assert "best best_val_map first" in f.read()


def test_mixed_single_and_multi_label_runs_fill_their_own_columns(tmp_path, caplog):
    from experiments.runs import compare_runs
    write_run(tmp_path / "runs/single", {"arch": "resnet18", "epochs": 1}, [epoch_row(0, 60.0)],
              {"test_top1": 58.0, "test_top5": 90.0})
    write_run(tmp_path / "runs/multi", {"arch": "resnet18", "epochs": 1, "multi_label": True}, [ml_row(0, 99.0, 50.0)],
              {"test_top1": 97.0, "test_top5": 99.0, "test_map": 49.0, "test_of1": 45.0})
    result = compare_runs([tmp_path / "runs"])
    header, table, order = read_table(result["csv"])
    assert {"best val top-1", "test top-1", "best val mAP", "test mAP"} <= set(header)
    assert header.count("best epoch") == 1
    assert table["single"]["best val top-1"] == "60.00" and table["single"]["best val mAP"] == ""
    assert table["multi"]["best val mAP"] == "50.00" and table["multi"]["best val top-1"] == ""  # p@1 is no top-1
    assert table["multi"]["test top-1"] == "" and table["multi"]["test mAP"] == "49.00"
    assert order == ["single", "multi"] and result["sort_by"] == "best_val_top1"  # default: no mAP mixed in
    assert "1 multi-label and 1 single-label runs: mAP and top-1 are not comparable" in caplog.text
    result = compare_runs([tmp_path / "runs"], out_dir=tmp_path / "by_map", sort_by="best_val_map")
    assert read_table(result["csv"])[2] == ["multi", "single"]


def test_the_headline_of_a_run_and_of_a_search():
    from experiments.runs import headline_metric
    assert headline_metric({"lr": 0.1}) == "val_top1"
    assert headline_metric({"multi_label": True}) == "val_map"  # a sweep's flags: the search's objective
    assert headline_metric({}, [{"epoch": 0, "val_map": 3.0}]) == "val_map"  # a run whose config lacks the flag


def test_a_multi_label_trial_is_judged_by_val_map(tmp_path, monkeypatch):
    """The study gets the trial's best val mAP (reported each epoch), not its p@1; a single-label one its top-1.
    The training process is replaced by one that writes the run's metrics.json, epoch by epoch."""
    import json

    import optuna

    import applications.sweep as sweep
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    rows = [ml_row(0, 90.0, 30.0), ml_row(1, 95.0, 42.0), ml_row(2, 97.0, 38.0)]

    def launch(children, flags, device, sweep_dir, watch=None) -> int:
        for i in range(len(rows)):
            (run_dir / "metrics.json").write_text(json.dumps({"history": rows[:i + 1]}))
            watch(None)
        return 0

    monkeypatch.setattr(sweep, "_launch", launch)
    for flags, best, reported in (({"multi_label": True, "tag": "m"}, 42.0, [30.0, 42.0, 38.0]),
                                  ({"tag": "s"}, 97.0, [90.0, 95.0, 97.0])):
        run_dir = tmp_path / flags["tag"]
        run_dir.mkdir()
        study = optuna.create_study(direction="maximize")
        trial = study.ask()
        assert sweep._run_trial(trial, flags, run_dir, None, tmp_path, None) == "complete"
        done = study.trials[0]
        assert done.value == best and list(done.intermediate_values.values()) == reported


def test_the_sweep_shows_a_variants_latest_step_line_once_and_not_too_often(tmp_path, caplog):
    """EpochReporter: the latest --log_interval line of the run's log.txt, when it changed, at most every
    ``step_every`` seconds; a line already there when the reporter starts (an earlier run's) is not repeated."""
    from applications.sweep import EpochReporter
    log = tmp_path / "log.txt"
    stamp = "2026-12-04 20:00:00 INFO engine.step_log: "
    line = "epoch 1/2  step {}/8  loss 1.0000  lr 1.00e-01  50 img/s  data 3%  eta 0:00:0{}"
    log.write_text(stamp + line.format(1, 7) + "\n")
    often, rarely = EpochReporter(tmp_path, "often", 2, step_every=0), EpochReporter(tmp_path, "rarely", 2)
    with caplog.at_level(logging.INFO, logger="applications.sweep"):
        often(), rarely()
        assert caplog.messages == []  # the line was there before
        log.write_text(log.read_text() + stamp + line.format(2, 6) + "\n2026-12-04 20:00:01 INFO x: other\n")
        often(), rarely(), often()
        log.write_text(log.read_text() + stamp + line.format(3, 5) + "\n")
        often(), rarely()
    assert caplog.messages == [f"often: {line.format(2, 6)}", f"rarely: {line.format(2, 6)}",
                               f"often: {line.format(3, 5)}"]  # rarely: 10 s have not passed


def test_the_trackers_are_the_flags_choices_and_load_their_package_only_when_asked(tmp_path):
    """--tracker's choices are "none" and the TRACKERS registry; a run without a tracker (and the training
    code itself) never imports wandb or mlflow."""
    import subprocess
    import sys

    from config import REPO_ROOT, build_parser
    from config.parser import actions_by_dest
    from experiments.tracking import TRACKERS, create_tracker
    assert list(actions_by_dest(build_parser())["tracker"].choices) == ["none", *TRACKERS]
    assert create_tracker("none", {}, tmp_path, resumed=False) is None
    with pytest.raises(ValueError, match="--tracker 'neptune' is not a tracker: choose from none, mlflow, wandb"):
        create_tracker("neptune", {}, tmp_path, resumed=False)
    code = ("import sys, applications.train, experiments.tracking; from experiments.tracking import RunRecorder; "
            "RunRecorder({'tracker': 'none'}, sys.argv[1], resumed=False); "
            "print(sorted(m for m in ('wandb', 'mlflow') if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True,
                       cwd=REPO_ROOT, check=True)
    assert r.stdout.strip() == "[]"
