"""Experiments: --compare over run directories, HParams in every run's events, --tracker mlflow, and
--sweep (grid, named variants, Optuna search) as real processes on the tiny digits."""
from __future__ import annotations

import json
import os
import re
import shlex
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import ROOT, TINY_SIZE, main_process, read_json, run_main, sweep_file, tiny_base, tiny_train_args


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
    assert header[:2] == ["run", "lr"] and "optimizer" not in header and "tag" not in header
    assert "epochs done" in header and "epochs planned" in header and len(set(header)) == len(header)
    for name in ("compare.md", "compare.csv", "compare.png"):
        assert (two_runs / name).is_file()
    csv_rows = (two_runs / "compare.csv").read_text().splitlines()
    assert csv_rows[0].split(",")[:2] == ["run", "lr"] and len(csv_rows) == 3
    best_vals = [float(row.split(",")[2]) for row in csv_rows[1:]]
    assert best_vals == sorted(best_vals, reverse=True)  # best val top-1 first
    assert all(row.endswith(",finished") for row in csv_rows[1:])


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



def wandb_records(path: Path) -> list:
    """The records of an offline W&B run file (``run-<id>.wandb``): W&B's LevelDB-style log of protobuf
    records (a 7-byte file header; 32 KiB blocks of records, each with a 7-byte header: CRC, length, type
    1 full / 2 first / 3 middle / 4 last), read here because wandb 0.31 ships no reader of its own."""
    from wandb.proto import wandb_internal_pb2 as pb
    raw, block, head = path.read_bytes(), 32768, 7
    assert raw[:4] == b":W&B"
    offset, pieces, records = head, b"", []
    while offset + head <= len(raw):
        left = block - offset % block
        length, kind = struct.unpack("<HB", raw[offset + 4:offset + head]) if left >= head else (0, 0)
        if kind == 0:  # the block's padding
            offset += left
            continue
        data = raw[offset + head:offset + head + length]
        offset += head + length
        pieces = data if kind in (1, 2) else pieces + data
        if kind in (1, 4):
            records.append(pb.Record.FromString(pieces))
    return records


def _items(items) -> dict:
    return {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in items}


@pytest.mark.slow
def test_tracker_wandb_records_params_metrics_and_pictures_offline(tiny_data, tmp_path, monkeypatch):
    """--tracker wandb with WANDB_MODE=offline: the run file W&B writes holds the params, each epoch's metrics
    at step epoch + 1, the final test metrics in the summary, the pictures and metrics.json, and a clean exit."""
    for key in ("WANDB_PROJECT", "WANDB_API_KEY"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wb"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    (tmp_path / "wb").mkdir()
    out = tmp_path / "out"
    assert run_main(tiny_train_args(tiny_data["folder"], out, "--tracker", "wandb", "--tag", "wb",
                                    "--arch", "simple_cnn")) == 0
    saved = read_json(out / "simple_cnn/wb/wandb_run.json")
    assert saved["project"] == "out"
    [folder] = (tmp_path / "wb" / "wandb").glob(f"offline-run-*-{saved['run_id']}")
    records = wandb_records(folder / f"run-{saved['run_id']}.wandb")
    kinds = [r.WhichOneof("record_type") for r in records]
    [run] = [r.run for r in records if r.HasField("run")]
    assert run.display_name == "simple_cnn/wb" and run.project == "out"
    params = _items(run.config.update)
    assert params["lr"] == 0.05 and params["image_size"] == f"{TINY_SIZE} {TINY_SIZE}" and "output" not in params
    history = read_json(out / "simple_cnn/wb/metrics.json")
    steps = [_items(r.history.item) for r in records if r.HasField("history")]
    epochs = [row for row in steps if "val_top1" in row]
    assert [row["_step"] for row in epochs] == [1, 2]
    assert [row["val_top1"] for row in epochs] == pytest.approx([row["val_top1"] for row in history["history"]])
    summary = {}
    for r in records:
        if r.HasField("summary"):
            summary.update(_items(r.summary.update))
    assert summary["test_top1"] == pytest.approx(history["test"]["test_top1"]) and "best_val_top1" in summary
    pictures = {key.split("/")[1] for row in steps for key in row if key.startswith("pictures/")}
    assert {"curves", "augmented_samples", "eval_test"} <= pictures
    files = {f.path for r in records if r.HasField("files") for f in r.files.files}
    assert "metrics.json" in files and any(p.startswith("media/images/pictures/curves") for p in files)
    assert (folder / "files" / "metrics.json").is_file()
    [exit_record] = [r.exit for r in records if r.HasField("exit")]
    assert kinds[-1] == "exit" and exit_record.exit_code == 0


# ---- sweeps as real processes ----------------------------------------------------------------------

def sweep_result(r: subprocess.CompletedProcess) -> dict:
    return json.loads(r.stdout[r.stdout.index("\n{") + 1:])


@pytest.mark.slow
def test_grid_sweep_two_devices_then_rerun_runs_nothing(tiny_data, tmp_path, sweep_here):
    sweep = sweep_file(tmp_path, {"name": "g", "base": tiny_base(tiny_data["folder"]),
                                  "grid": {"lr": [0.05, 0.1], "label_smoothing": [0.0, 0.1]}})
    r = sweep_here(str(sweep), "--output", str(tmp_path / "out"), "--sweep_devices", "cpu,cpu")
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
    r = sweep_here(str(sweep), "--output", str(tmp_path / "out"))
    assert r.returncode == 0 and sweep_result(r)["ran"] == 0 and sweep_result(r)["skipped"] == 4
    assert r.stderr.count("skip ") == 4 and "start " not in r.stderr


def test_sweep_only_keeps_every_variants_row_and_the_console_shows_each_epoch(tiny_data, tmp_path):
    """--sweep_only one variant, then the other: the sweep's compare.csv holds both (the first is not
    lost); while a variant runs, the console gets one line per epoch naming it, and with --log_interval its
    latest per-step line."""
    import csv
    sweep = sweep_file(tmp_path, {"name": "o", "base": tiny_base(tiny_data["folder"], epochs=2),
                                  "variants": {"first": {}, "second": {"label_smoothing": 0.1, "log_interval": 1}}})
    for tag in ("first", "second"):
        r = main_process("--sweep", str(sweep), "--output", str(tmp_path / "out"), "--sweep_only", tag,
                         cwd=tmp_path)
        assert r.returncode == 0, r.stderr[-3000:]
        for epoch in (1, 2):
            assert re.search(rf"INFO applications\.sweep: {tag}: epoch {epoch}/2  train loss \d+\.\d{{4}}  "
                             rf"val loss \d+\.\d{{4}} top-1 \d+\.\d\d", r.stderr), r.stderr[-3000:]
        assert not re.search(r"(first|second): epoch 3", r.stderr)
        step_line = rf"INFO applications\.sweep: {tag}: epoch [12]/2  step [1-4]/4  loss \d+\.\d{{4}}  lr .* img/s"
        assert bool(re.search(step_line, r.stderr)) == (tag == "second"), r.stderr[-3000:]
    assert "first: epoch" not in r.stderr  # the second call ran the second variant only
    with open(tmp_path / "out/o/compare.csv", newline="") as f:
        rows = {row["run"]: row for row in csv.DictReader(f)}
    assert set(rows) == {"first", "second"}, rows
    assert all(row["status"] == "finished" and row["epochs done"] == "2" for row in rows.values())
    assert sweep_result(r)["compare"]["runs"] == 2 and sweep_result(r)["ran"] == 1


@pytest.mark.slow
def test_sweep_stopped_by_sigterm_resumes(tiny_data, tmp_path, sweep_here):
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
    r = sweep_here(str(sweep), "--output", str(out))
    assert r.returncode == 0, r.stderr[-3000:]
    assert sweep_result(r)["ran"] == 2
    assert "resumed from" in (first / "log.txt").read_text()
    assert all("test" in read_json(out / f"v/simple_cnn/{t}/metrics.json") for t in ("first", "second"))
    assert len(read_json(first / "metrics.json")["history"]) == 3


@pytest.mark.slow
def test_search_four_trials_with_pruning_prints_a_best_command_that_runs(tiny_data, tmp_path, sweep_here):
    import optuna
    sweep = sweep_file(tmp_path, {"name": "s", "base": tiny_base(tiny_data["folder"], epochs=2),
                                  "search": {"lr": {"low": 1.0e-4, "high": 0.5, "log": True},
                                             "label_smoothing": [0.0, 0.1]},
                                  "trials": 4, "sampler_seed": 0,
                                  "pruning": {"startup_trials": 1, "warmup_epochs": 0}})
    r = sweep_here(str(sweep), "--output", str(tmp_path / "out"))
    assert r.returncode == 0, r.stderr[-3000:]
    study = optuna.load_study(study_name="s", storage=f"sqlite:///{tmp_path / 'out/s/study.db'}")
    states = [t.state.name for t in study.trials]
    assert len(states) == 4 and set(states) <= {"COMPLETE", "PRUNED"} and "PRUNED" in states, states
    pruned = next(t for t in study.trials if t.state.name == "PRUNED")
    assert len(pruned.intermediate_values) >= 1 and (Path(pruned.user_attrs["run_dir"]) / "PRUNED").is_file()
    best_line = next(line for line in r.stdout.splitlines() if line.startswith("python main.py --train"))
    assert f"--lr {study.best_params['lr']!r}" in best_line
    assert run_main([*shlex.split(best_line)[2:], "--output", str(tmp_path / "best"), "--epochs", "1"]) == 0
    assert "test" in read_json(tmp_path / "best/simple_cnn/default/metrics.json")


@pytest.mark.slow
def test_a_crashing_variant_does_not_stop_the_sweep(tiny_data, tmp_path, sweep_here):
    sweep = sweep_file(tmp_path, {"name": "c", "base": tiny_base(tiny_data["folder"]),
                                  "variants": {"crash": {"num_classes": 5}, "fine": {}}})
    r = sweep_here(str(sweep), "--output", str(tmp_path / "out"))
    assert r.returncode == 0, r.stderr[-3000:]
    result = sweep_result(r)
    assert result["ran"] == 2 and result["failed"] == ["crash"]
    assert re.search(r"ERROR applications\.sweep: crash failed \(exit 1\): .*--num_classes 5 disagrees with the data",
                     r.stderr)
    assert "test" in read_json(tmp_path / "out/c/simple_cnn/fine/metrics.json")


@pytest.mark.slow
def test_search_stopped_by_sigterm_continues_its_study(tiny_data, tmp_path, sweep_here):
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
    r = sweep_here(str(sweep), "--output", str(out))
    assert r.returncode == 0, r.stderr[-3000:]
    trials = optuna.load_study(study_name="r", storage=f"sqlite:///{out / 'r/study.db'}").trials
    states = [(t.state.name, t.params, t.user_attrs) for t in trials]
    assert [t.state.name for t in trials] == ["FAIL", "COMPLETE", "COMPLETE"], (states, first[-2000:], r.stderr[-2000:])
    assert trials[0].user_attrs["interrupted"]
    assert trials[1].params == trials[0].params and trials[2].params != trials[0].params
    assert "resumed from" in (Path(trials[1].user_attrs["run_dir"]) / "log.txt").read_text()


# ---- sweeps: reuse only what matches, children die with the sweep, nothing succeeded ---------------

def _gone(pid: int) -> bool:
    """No process ``pid`` (or only its zombie, which a container's init may never reap)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


def _sweep_process(sweep: Path, out: Path, cwd: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(ROOT / "main.py"), "--sweep", str(sweep), "--output", str(out)],
                            cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})


def _kill_mid_training(proc: subprocess.Popen, run_glob: str, root: Path, sig: int = signal.SIGKILL) -> int:
    """Wait until a run under ``root`` matching ``run_glob`` has trained an epoch, send ``sig`` to the sweep,
    wait for it to end and return the training child's pid (from the run's lock file)."""
    deadline = time.time() + 300
    while True:
        runs = [p.parent for p in root.glob(f"{run_glob}/metrics.json") if read_json(p).get("history")]
        if runs and (runs[0] / "run.lock").is_file():
            pid = json.loads((runs[0] / "run.lock").read_text())["pid"]
            break
        assert proc.poll() is None and time.time() < deadline, proc.communicate()[1][-3000:]
        time.sleep(0.2)
    proc.send_signal(sig)
    proc.communicate(timeout=120)
    return pid


def _wait_gone(pid: int, seconds: float) -> None:
    deadline = time.time() + seconds
    while not _gone(pid):
        assert time.time() < deadline, f"training process {pid} outlived its sweep (SIGKILL) by {seconds} s"
        time.sleep(0.2)


@pytest.mark.slow
def test_sweep_killed_outright_takes_its_child_along_and_the_rerun_finishes_each_variant_once(tiny_data, tmp_path,
                                                                                               sweep_here):
    """SIGKILL of the sweep: its training child dies too (PR_SET_PDEATHSIG: it saves and exits), so the
    rerun resumes that variant, runs the other, and every variant ends finished exactly once."""
    sweep = sweep_file(tmp_path, {"name": "k", "base": tiny_base(tiny_data["folder"]),
                                  "variants": {"long": {"epochs": 30}, "short": {}}})
    out = tmp_path / "out"
    proc = _sweep_process(sweep, out, tmp_path)
    pid = _kill_mid_training(proc, "k/simple_cnn/long", out)
    _wait_gone(pid, 60)
    long = out / "k/simple_cnn/long"
    assert "test" not in read_json(long / "metrics.json"), "the orphaned run trained on to its end"
    r = sweep_here(str(sweep), "--output", str(out))
    assert r.returncode == 0, r.stderr[-3000:]
    assert sweep_result(r)["ran"] == 2 and sweep_result(r)["failed"] == []
    assert r.stderr.count("start long") == 1 and r.stderr.count("start short") == 1
    assert "resumed from" in (long / "log.txt").read_text()
    assert [row["epoch"] for row in read_json(long / "metrics.json")["history"]] == list(range(30))
    assert all("test" in read_json(out / f"k/simple_cnn/{t}/metrics.json") for t in ("long", "short"))
    assert not list(out.glob("k/simple_cnn/*/run.lock"))


@pytest.mark.slow
def test_search_killed_outright_asks_its_running_trial_again(tiny_data, tmp_path, sweep_here):
    """SIGKILL mid-trial leaves the trial RUNNING in the study; the rerun sees its sweep is gone, fails it
    as interrupted and asks its flags again: the run resumes and the study holds one complete trial."""
    import optuna
    sweep = sweep_file(tmp_path, {"name": "r", "base": tiny_base(tiny_data["folder"], epochs=20),
                                  "search": {"lr": [0.05]}, "trials": 1, "pruning": False})
    out = tmp_path / "out"
    pid = _kill_mid_training(_sweep_process(sweep, out, tmp_path), "r/simple_cnn/*", out)
    _wait_gone(pid, 60)
    r = sweep_here(str(sweep), "--output", str(out))
    assert r.returncode == 0, r.stderr[-3000:]
    assert "trial 0 was left running by a sweep that is gone" in r.stderr
    trials = optuna.load_study(study_name="r", storage=f"sqlite:///{out / 'r/study.db'}").trials
    assert [t.state.name for t in trials] == ["FAIL", "COMPLETE"] and trials[0].user_attrs["interrupted"]
    assert trials[1].params == trials[0].params and sweep_result(r)["complete"] == 1
    assert "resumed from" in (Path(trials[1].user_attrs["run_dir"]) / "log.txt").read_text()


@pytest.mark.slow
def test_sweep_reuses_a_finished_run_only_with_the_same_settings(tiny_data, tmp_path, sweep_here):
    """base: {output: DIR} is where the runs go; a rerun with an extra flag or an edited base is refused
    naming the flag (or runs afresh with --overwrite); more epochs train on; a live holder of a variant's
    folder is named, not trained beside. The sweeps run in this process (the one beside a lock holder in
    a process of its own); their variants train in child processes."""
    import yaml

    from utils.runlock import RunLock
    body = {"name": "u", "base": tiny_base(tiny_data["folder"], output=str(tmp_path / "base_out")),
            "variants": {"a": {}}}
    sweep = sweep_file(tmp_path, body)
    r = sweep_here(str(sweep))
    run = tmp_path / "base_out/u/simple_cnn/a"
    assert r.returncode == 0 and "test" in read_json(run / "metrics.json"), r.stderr[-3000:]
    assert not (tmp_path / "output").exists()
    finished = (run / "metrics.json").read_text()

    def rerun(*extra: str, process: bool = False, **base) -> subprocess.CompletedProcess:
        sweep_file(tmp_path, {**body, "base": {**body["base"], **base}})
        if process:
            return main_process("--sweep", str(sweep), *extra, cwd=tmp_path)
        return sweep_here(str(sweep), *extra)

    r = rerun("--weight_decay", "0.001")
    assert r.returncode == 1 and re.search(rf"{run} \(--weight_decay: 0.0001 -> 0.001\); pass --overwrite", r.stderr)
    r = rerun(lr=0.02)
    assert r.returncode == 1 and "(--lr: 0.05 -> 0.02)" in r.stderr and "start " not in r.stderr
    assert (run / "metrics.json").read_text() == finished  # nothing touched
    with RunLock(run):  # a live process holds the folder: named, nothing started beside it
        r = rerun(epochs=2, process=True)
    assert r.returncode == 1 and f"run directory {run} is in use by pid {os.getpid()}" in r.stderr
    r = rerun(epochs=2)  # more epochs: the finished run trains on, as --train does
    assert r.returncode == 0 and "resumed from" in (run / "log.txt").read_text(), r.stderr[-3000:]
    assert len(read_json(run / "metrics.json")["history"]) == 2
    r = rerun(epochs=1)
    assert r.returncode == 1 and "(--epochs: 2 -> 1)" in r.stderr
    r = rerun("--overwrite", epochs=1, lr=0.02)
    assert r.returncode == 0, r.stderr[-3000:]
    assert yaml.safe_load((run / "config.yaml").read_text())["lr"] == 0.02
    assert len(read_json(run / "metrics.json")["history"]) == 1
    r = rerun(epochs=1, lr=0.02)
    assert r.returncode == 0 and "skip a: finished" in r.stderr and sweep_result(r)["ran"] == 0


@pytest.mark.slow
def test_a_sweep_where_nothing_succeeded_exits_1(tiny_data, tmp_path, sweep_here):
    sweep = sweep_file(tmp_path, {"name": "f", "base": tiny_base(tiny_data["folder"]),
                                  "variants": {"crash": {"num_classes": 5}}})
    r = sweep_here(str(sweep), "--output", str(tmp_path / "out"))
    assert r.returncode == 1, r.stderr[-3000:]
    assert f"nothing succeeded: 1 variant(s) failed (crash); their output: {tmp_path / 'out/f/logs'}" in r.stderr
    assert "Traceback" not in r.stderr


@pytest.mark.slow
def test_sweep_hung_up_stops_its_child(tiny_data, tmp_path):
    """SIGHUP (the terminal closed) stops the running variant as SIGTERM does: it saves, the sweep exits 130."""
    sweep = sweep_file(tmp_path, {"name": "h", "base": tiny_base(tiny_data["folder"], epochs=30),
                                  "variants": {"long": {}}})
    proc = _sweep_process(sweep, tmp_path / "out", tmp_path)
    pid = _kill_mid_training(proc, "h/simple_cnn/long", tmp_path / "out", signal.SIGHUP)
    assert proc.returncode == 130 and _gone(pid)
    run = tmp_path / "out/h/simple_cnn/long"
    assert "test" not in read_json(run / "metrics.json") and (run / "checkpoints/last.pth").is_file()


def test_a_multi_label_search_is_judged_and_compared_by_map(mosaics, tmp_path, sweep_here):
    """--multi_label runs: the study's values are each trial's best val mAP, the table shows and sorts by mAP."""
    import optuna
    base = tiny_base(mosaics, dataset="csv", multi_label=True, image_size=[32, 32], epochs=2)
    sweep = sweep_file(tmp_path, {"name": "m", "base": base, "search": {"lr": [0.01, 0.1]}, "trials": 2,
                                  "sampler_seed": 0, "pruning": False})
    r = sweep_here(str(sweep), "--output", str(tmp_path / "out"))
    assert r.returncode == 0, r.stderr[-3000:]
    study = optuna.load_study(study_name="m", storage=f"sqlite:///{tmp_path / 'out/m/study.db'}")
    for trial in study.trials:
        history = read_json(Path(trial.user_attrs["run_dir"]) / "metrics.json")["history"]
        assert trial.value == max(row["val_map"] for row in history)  # not p@1 (val_top1)
        assert list(trial.intermediate_values.values()) == [row["val_map"] for row in history]
    assert re.search(r"best trial \d: val mAP \d", r.stdout)
    header = (tmp_path / "out/m/compare.csv").read_text().splitlines()[0].split(",")
    assert "best val mAP" in header and "test mAP" in header and "best val top-1" not in header
