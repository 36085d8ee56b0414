"""Experiments: --compare over run directories, HParams in every run's events, --tracker mlflow, and
--sweep (grid, named variants, Optuna search) as real processes on the tiny digits."""
from __future__ import annotations

import json
import re
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from conftest import ROOT, TINY_SIZE, read_json, run_main, tiny_train_args
from config import ConfigError


def main_process(*args: str, cwd: Path | None = None, timeout: int = 300, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "main.py"), *args], cwd=cwd or ROOT, capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, "OMP_NUM_THREADS": "1", **env})


@pytest.fixture(scope="module")
def two_runs(tiny_data, tmp_path_factory) -> Path:
    """Two real 1-epoch runs that differ in --lr only."""
    out = tmp_path_factory.mktemp("compare")
    for lr in ("0.05", "0.2"):
        assert run_main(tiny_train_args(tiny_data["folder"], out, "--arch", "simple_cnn", "--epochs", "1", "--lr", lr,
                                        "--tag", f"lr{lr}")) == 0
    return out


# ---- --compare -------------------------------------------------------------------------------------

def test_compare_real_runs_without_importing_torch(two_runs):
    code = ("import sys, main; rc = main.main(['--compare', sys.argv[1]]); "
            "assert 'torch' not in sys.modules, 'torch was imported'; sys.exit(rc)")
    r = subprocess.run([sys.executable, "-c", code, str(two_runs)], cwd=ROOT, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    rows = [line for line in r.stdout.splitlines() if line.startswith("| simple_cnn/")]
    assert len(rows) == 2
    header = [cell.strip() for cell in r.stdout.splitlines()[0].split("|")[1:-1]]
    # only the flag that differs (not tag, output or the identical ones) becomes a column
    assert header[:2] == ["run", "lr"] and "epochs" in header and "optimizer" not in header and "tag" not in header
    for name in ("compare.md", "compare.csv", "compare.png"):
        assert (two_runs / name).is_file()
    csv_rows = (two_runs / "compare.csv").read_text().splitlines()
    assert csv_rows[0].split(",")[:2] == ["run", "lr"] and len(csv_rows) == 3
    best_vals = [float(row.split(",")[2]) for row in csv_rows[1:]]
    assert best_vals == sorted(best_vals, reverse=True)  # best val top-1 first
    assert all(row.endswith(",finished") for row in csv_rows[1:])


def write_run(folder: Path, config: dict, history: list[dict] | None = None, test: dict | None = None,
              log: str | None = None) -> Path:
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    if history is not None:
        metrics = {"history": history, **({"test": test} if test else {})}
        (folder / "metrics.json").write_text(json.dumps(metrics))
    if log is not None:
        (folder / "log.txt").write_text(log)
    return folder


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
    assert table["done"]["test top-1"] == "75.00" and table["done"]["epochs"] == "3/3"
    assert table["done"]["train min"] == "1.50" and table["done"]["train img/s"] == "101"
    assert table["failed"]["status"] == "failed" and table["failed"]["test top-1"] == ""
    assert table["stopped"]["status"] == "interrupted" and table["nothing_yet"]["status"] == "interrupted"
    r = main_process("--compare", str(tmp_path / "runs/*"), "--sort_by", "test_top1")
    assert r.returncode == 0 and r.stdout.splitlines()[2].startswith("| done ")


def test_mode_flags_are_not_settings():
    from config import MODES
    from utils.runs import NOT_SETTINGS
    assert set(MODES) <= NOT_SETTINGS


def test_compare_refuses_a_missing_path(tmp_path):
    r = main_process("--compare", str(tmp_path / "nope"))
    assert r.returncode == 1 and "--compare:" in r.stderr and "does not exist" in r.stderr


def test_a_run_ending_in_an_error_says_so_in_its_log(tmp_path):
    """log_to_file ends the log with the error (--compare's 'failed'); a finished run's log does not."""
    from utils.misc import FAILED_MARK, log_to_file
    from utils.runs import read_run
    run = write_run(tmp_path / "run", {"tag": "run"}, [epoch_row(0, 10.0)])
    with pytest.raises(ValueError), log_to_file(run / "log.txt"):
        raise ValueError("bad thing")
    assert (run / "log.txt").read_text().strip().endswith(f"{FAILED_MARK}ValueError: bad thing")
    assert read_run(run).status == "failed" and read_run(run).failure == "ValueError: bad thing"
    with log_to_file(run / "log.txt"):
        import logging
        logging.getLogger("x").warning("resumed")
    assert read_run(run).status == "interrupted"


# ---- HParams and MLflow ----------------------------------------------------------------------------

def test_every_run_writes_hparams(two_runs):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2
    events = EventAccumulator(str(two_runs / "simple_cnn/lr0.05/tensorboard"))
    events.Reload()
    content = events.PluginTagToContent("hparams")
    assert {"_hparams_/experiment", "_hparams_/session_start_info", "_hparams_/session_end_info"} <= set(content)
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"]).session_start_info
    assert start.hparams["lr"].number_value == 0.05 and start.hparams["arch"].string_value == "simple_cnn"
    assert start.hparams["image_size"].string_value == f"{TINY_SIZE} {TINY_SIZE}" and "output" not in start.hparams
    metrics = read_json(two_runs / "simple_cnn/lr0.05/metrics.json")["test"]
    scalars = events.Scalars("hparams/test_top1")
    assert scalars[-1].value == pytest.approx(metrics["test_top1"])
    assert "hparams/best_val_top1" in events.Tags()["scalars"]


@pytest.mark.slow
def test_tracker_mlflow_records_params_metrics_and_pictures(tiny_data, tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    out = tmp_path / "out"
    assert run_main(tiny_train_args(tiny_data["folder"], out, "--tracker", "mlflow", "--tag", "ml",
                                    "--arch", "simple_cnn")) == 0
    saved = read_json(out / "simple_cnn/ml/mlflow_run.json")
    assert saved["tracking_uri"] == f"sqlite:///{(out / 'mlruns' / 'mlflow.db').resolve()}"
    client = MlflowClient(saved["tracking_uri"])
    run = client.get_run(saved["run_id"])
    assert run.info.status == "FINISHED" and run.info.run_name == "simple_cnn/ml"
    assert run.data.params["lr"] == "0.05" and run.data.params["image_size"] == f"{TINY_SIZE} {TINY_SIZE}"
    history = read_json(out / "simple_cnn/ml/metrics.json")
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val_top1")] == [1, 2]
    assert [m.value for m in client.get_metric_history(run.info.run_id, "val_top1")] == \
        pytest.approx([row["val_top1"] for row in history["history"]])
    assert run.data.metrics["test_top1"] == pytest.approx(history["test"]["test_top1"])
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"curves.png", "augmented_samples.png", "metrics.json", "eval_test"} <= artifacts
    # MLFLOW_TRACKING_URI wins over the local store
    other = f"sqlite:///{tmp_path / 'server.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", other)
    assert run_main(tiny_train_args(tiny_data["folder"], out, "--tracker", "mlflow", "--tag", "ml2",
                                    "--epochs", "1", "--arch", "simple_cnn")) == 0
    saved = read_json(out / "simple_cnn/ml2/mlflow_run.json")
    assert saved["tracking_uri"] == other
    assert MlflowClient(other).get_run(saved["run_id"]).data.params["epochs"] == "1"
    assert (tmp_path / "artifacts").is_dir() and not (Path.cwd() / "mlruns").exists()  # artifacts beside the db


# ---- sweep files -----------------------------------------------------------------------------------

def sweep_file(tmp_path: Path, body: dict, name: str = "sweep.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(body, sort_keys=False))
    return path


def tiny_base(data: Path, **extra) -> dict:
    return {"data": str(data), "arch": "simple_cnn", "image_size": [TINY_SIZE, TINY_SIZE], "batch_size": 8,
            "workers": 0, "epochs": 1, "warmup": 0, "lr": 0.05, **extra}


def test_grid_expands_to_tagged_variants(tmp_path):
    from applications.sweep_plan import load_sweep
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
])
def test_bad_sweep_files_are_refused_clearly(tmp_path, body, message):
    import re
    from applications.sweep_plan import load_sweep
    with pytest.raises(ConfigError) as e:
        load_sweep(sweep_file(tmp_path, body))
    assert re.search(message, str(e.value)), str(e.value)
    assert str(e.value).startswith(f"--sweep: {tmp_path / 'sweep.yaml'}") or "sweep.yaml" in str(e.value)


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


# ---- sweeps as real processes ----------------------------------------------------------------------

def sweep_result(r: subprocess.CompletedProcess) -> dict:
    return json.loads(r.stdout[r.stdout.index("\n{") + 1:])


@pytest.mark.slow
def test_grid_sweep_two_devices_then_rerun_runs_nothing(tiny_data, tmp_path):
    sweep = sweep_file(tmp_path, {"name": "g", "base": tiny_base(tiny_data["folder"]),
                                  "grid": {"lr": [0.05, 0.1], "label_smoothing": [0.0, 0.1]}})
    r = main_process("--sweep", str(sweep), "--output", str(tmp_path / "out"), "--sweep_devices", "cpu,cpu",
                     cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    result = sweep_result(r)
    assert result["ran"] == 4 and result["failed"] == [] and result["compare"]["differing"] == ["label_smoothing", "lr"]
    runs = sorted(p.name for p in (tmp_path / "out/g/simple_cnn").iterdir())
    assert runs == ["lr-0.05_label_smoothing-0.0", "lr-0.05_label_smoothing-0.1", "lr-0.1_label_smoothing-0.0",
                    "lr-0.1_label_smoothing-0.1"]
    assert "test" in read_json(tmp_path / "out/g/simple_cnn" / runs[0] / "metrics.json")
    assert r.stderr.count("on device cpu") == 4  # each variant got a device slot
    table = [line for line in r.stdout.splitlines() if line.startswith("| lr-")]
    assert len(table) == 4 and all(line.rstrip(" |").endswith("finished") for line in table)
    assert (tmp_path / "out/g/compare.md").is_file() and (tmp_path / "out/g/logs").is_dir()
    r = main_process("--sweep", str(sweep), "--output", str(tmp_path / "out"), cwd=tmp_path)
    assert r.returncode == 0 and sweep_result(r)["ran"] == 0 and sweep_result(r)["skipped"] == 4
    assert r.stderr.count("skip ") == 4 and "start " not in r.stderr


@pytest.mark.slow
def test_sweep_stopped_by_sigterm_resumes(tiny_data, tmp_path):
    """SIGTERM to the sweep reaches the running variant, which saves and exits; the sweep exits 130 and
    starts nothing more; rerunning it resumes that run from its checkpoint and runs the rest."""
    sweep = sweep_file(tmp_path, {"name": "v", "base": tiny_base(tiny_data["folder"], epochs=3),
                                  "variants": {"first": {}, "second": {"label_smoothing": 0.1}}})
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, str(ROOT / "main.py"), "--sweep", str(sweep), "--output", str(out)],
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    first = out / "v/simple_cnn/first"
    deadline = time.time() + 300
    while not ((first / "metrics.json").is_file() and read_json(first / "metrics.json")["history"]):
        assert proc.poll() is None and time.time() < deadline, proc.communicate()[1][-3000:]
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr[-3000:]
    assert "SIGTERM received" in stderr and not (out / "v/simple_cnn/second").exists()
    assert "test" not in read_json(first / "metrics.json") and (first / "checkpoints/last.pth").is_file()
    r = main_process("--sweep", str(sweep), "--output", str(out), cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert sweep_result(r)["ran"] == 2
    assert "resumed from" in (first / "log.txt").read_text()
    assert all("test" in read_json(out / f"v/simple_cnn/{t}/metrics.json") for t in ("first", "second"))
    assert len(read_json(first / "metrics.json")["history"]) == 3


@pytest.mark.slow
def test_search_four_trials_with_pruning_prints_a_best_command_that_runs(tiny_data, tmp_path):
    import optuna
    sweep = sweep_file(tmp_path, {"name": "s", "base": tiny_base(tiny_data["folder"], epochs=2),
                                  "search": {"lr": {"low": 1.0e-4, "high": 0.5, "log": True},
                                             "label_smoothing": [0.0, 0.1]},
                                  "trials": 4, "sampler_seed": 0,
                                  "pruning": {"startup_trials": 1, "warmup_epochs": 0}})
    r = main_process("--sweep", str(sweep), "--output", str(tmp_path / "out"), cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    study = optuna.load_study(study_name="s", storage=f"sqlite:///{tmp_path / 'out/s/study.db'}")
    states = [t.state.name for t in study.trials]
    assert len(states) == 4 and set(states) <= {"COMPLETE", "PRUNED"} and "PRUNED" in states, states
    pruned = next(t for t in study.trials if t.state.name == "PRUNED")
    assert len(pruned.intermediate_values) >= 1 and (Path(pruned.user_attrs["run_dir"]) / "PRUNED").is_file()
    best_line = next(line for line in r.stdout.splitlines() if line.startswith("python main.py --train"))
    assert f"--lr {study.best_params['lr']!r}" in best_line
    run = main_process(*shlex.split(best_line)[2:], "--output", str(tmp_path / "best"), "--epochs", "1",
                       cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "test" in read_json(tmp_path / "best/simple_cnn/default/metrics.json")


@pytest.mark.slow
def test_a_crashing_variant_does_not_stop_the_sweep(tiny_data, tmp_path):
    sweep = sweep_file(tmp_path, {"name": "c", "base": tiny_base(tiny_data["folder"]),
                                  "variants": {"crash": {"num_classes": 5}, "fine": {}}})
    r = main_process("--sweep", str(sweep), "--output", str(tmp_path / "out"), cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    result = sweep_result(r)
    assert result["ran"] == 2 and result["failed"] == ["crash"]
    assert re.search(r"ERROR applications\.sweep: crash failed \(exit 1\): .*--num_classes 5 disagrees with the data", r.stderr)
    assert "test" in read_json(tmp_path / "out/c/simple_cnn/fine/metrics.json")


def test_device_slots():
    from applications.sweep_plan import device_flags_env, parse_devices
    assert parse_devices("0, 1,cpu") == ["0", "1", "cpu"] and parse_devices(None) == [None]
    assert device_flags_env("1") == ({"device": "cuda"}, {"CUDA_VISIBLE_DEVICES": "1"})
    assert device_flags_env("cpu") == ({"device": "cpu"}, {"CUDA_VISIBLE_DEVICES": ""})
    assert device_flags_env(None) == ({}, {})


@pytest.mark.slow
def test_search_stopped_by_sigterm_continues_its_study(tiny_data, tmp_path):
    """A SIGTERM mid-trial leaves the trial failed-as-interrupted; the rerun asks for its flags again (the
    same run directory, resumed) and draws new flags for the next trial, not the first run's draws."""
    import optuna
    sweep = sweep_file(tmp_path, {"name": "r", "base": tiny_base(tiny_data["folder"], epochs=8),
                                  "search": {"lr": {"low": 1.0e-3, "high": 0.1, "log": True}},
                                  "trials": 2, "sampler_seed": 0, "pruning": False})
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, str(ROOT / "main.py"), "--sweep", str(sweep), "--output", str(out)],
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.time() + 300
    while not list(out.glob("r/simple_cnn/*/metrics.json")):
        assert proc.poll() is None and time.time() < deadline, proc.communicate()[1][-3000:]
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    first = proc.communicate(timeout=120)[1]
    assert proc.returncode == 130, first[-3000:]
    r = main_process("--sweep", str(sweep), "--output", str(out), cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    trials = optuna.load_study(study_name="r", storage=f"sqlite:///{out / 'r/study.db'}").trials
    states = [(t.state.name, t.params, t.user_attrs) for t in trials]
    assert [t.state.name for t in trials] == ["FAIL", "COMPLETE", "COMPLETE"], (states, first[-2000:], r.stderr[-2000:])
    assert trials[0].user_attrs["interrupted"]
    assert trials[1].params == trials[0].params and trials[2].params != trials[0].params
    assert "resumed from" in (Path(trials[1].user_attrs["run_dir"]) / "log.txt").read_text()
