"""Benchmark scripts run in their --quick mode (that they work, not their numbers). loss_options.py runs
with every option under z_task_shell/2_train_with_strategies.sh (tests/e2e/test_recipes.py)."""
from __future__ import annotations

import math
import subprocess
import sys

import pytest

from helpers import ROOT


def _quick(script: str, *args: str) -> str:
    r = subprocess.run([sys.executable, f"benchmarks/{script}", "--quick", *args], cwd=ROOT, capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return r.stdout


@pytest.mark.slow
def test_data_pipeline_quick(tmp_path):
    out = _quick("data_pipeline.py", "--data", str(tmp_path / "photos"))
    rows = {line.split("  ")[0].strip(): line for line in out.splitlines()[1:]}
    assert any(k.startswith("ours") for k in rows) and any(k.startswith("standard") for k in rows)
    assert "x" in rows[next(k for k in rows if k.startswith("ours"))].split()[-1]  # the ratio column


@pytest.mark.slow
def test_train_speed_quick(tmp_path, tiny_data):
    out = _quick("train_speed.py", "--photos", str(tmp_path / "photos"), "--digits", str(tiny_data["folder"]))
    lines = [line for line in out.splitlines()[1:] if line.strip()]
    assert [line.split()[0] for line in lines] == ["digits", "photos"]
    assert all(float(line.split()[3].rstrip("x")) > 0 for line in lines)


@pytest.mark.slow
def test_time_to_accuracy_quick(tiny_data):
    out = _quick("time_to_accuracy.py", "--data", str(tiny_data["folder"]))
    rows = [line.split() for line in out.splitlines()[2:]]
    assert [r[0] for r in rows] == ["recipe", "recipe32", "standard"]
    for r in rows:  # seconds (nan when the tiny run misses the target), epochs run, best val top-1, command
        assert math.isnan(float(r[1])) or float(r[1]) > 0
        assert 1 <= int(r[2]) <= 2 and 0 <= float(r[3]) <= 100 and r[4:6] == ["python", "main.py"]


@pytest.mark.slow
def test_model_zoo_quick():
    out = _quick("model_zoo.py")
    row = next(line for line in out.splitlines() if line.startswith("| mobilenet_v3_small"))
    params, gflops, ms, test_top1 = (float(v) for v in row.strip("| ").split("|")[1:5])
    assert params == pytest.approx(2.54, abs=0.01)  # torchvision's mobilenet_v3_small: 2,542,856 parameters
    assert gflops == pytest.approx(0.115, abs=0.012)  # torchvision: 0.06 GFLOPS counted as multiply-adds
    assert ms > 0 and 0 <= test_top1 <= 100


def test_cpu_inference_benchmark_quick_mode_runs():
    """(In tests/e2e: the quick mode exports and times resnet18 on five paths, about 30 CPU seconds.)"""
    out = _quick("cpu_inference.py")
    assert "| resnet18 |     1 |" in out and "| resnet18 |     4 |" in out
    for path in ("TorchScript", "ORT", "ORT int8", "OpenVINO", "OpenVINO int8"):  # every path timed beside eager
        assert f"eager/{path} |" in out and f"resnet18 batch 1, {path}:" in out
    assert "DIFFERENT" not in out  # the exports compute what eager computes


@pytest.mark.slow
def test_shards_vs_folders_quick(tmp_path):
    out = _quick("shards_vs_folders.py", "--data", str(tmp_path / "photos"))
    rows = [line.split() for line in out.splitlines()[1:] if line.strip()]
    assert [row[0] for row in rows] == ["bytes", "pipeline"]
    assert all(float(row[2]) > 0 and float(row[3]) > 0 and row[4].endswith("x") for row in rows)


@pytest.mark.slow
def test_trust_quick(tiny_data):
    """benchmarks/trust.py --quick: one seed's row (best.pth, hflip TTA, the last-2 average, the calibrated
    model) and the summary lines; the calibrated top-1 is best.pth's (the script asserts it)."""
    out = _quick("trust.py", "--data", str(tiny_data["folder"]))
    lines = out.splitlines()
    head = next(i for i, line in enumerate(lines) if line.startswith("| seed |"))
    row = [cell.strip() for cell in lines[head + 2].strip("|").split("|")]
    assert row[0] == "0" and all(0 <= float(row[i]) <= 100 for i in (1, 3, 5, 7, 9))
    assert all(float(row[i]) > 0 for i in (2, 4, 6, 8, 10))
    assert "--tta hflip vs best.pth" in out and "--average last:2 vs best.pth" in out
    assert "ECE lower after --calibrate on the test split in" in out and "of 1 seeds" in out


@pytest.mark.slow
@pytest.mark.parametrize("task", ["digits", "mosaic"])
def test_distillation_quick(task, tiny_data, mosaics):
    """The teacher, --knowledge, and a student three ways (none, file, online): one table row each; on the
    multi-label mosaics online and none only, compared on mAP."""
    data = tiny_data["folder"] if task == "digits" else mosaics
    out = _quick("distillation.py", "--task", task, "--data", str(data), "--image_size", "16", "16", "-b", "8",
                 "--cache_dataset", "none", "-j", "0")
    rows = {line.split("|")[1].strip(): line.split("|")[2:-1] for line in out.splitlines() if line.startswith("| ")}
    routes = ["none", "file", "online"] if task == "digits" else ["none", "online"]
    assert list(rows)[1:] == ["teacher resnet18", *(f"simple_cnn {r}" for r in routes)]
    assert list(rows)[0].startswith("route") and ("mean mAP" in out) == (task == "mosaic")
    for name in list(rows)[1:]:
        top1, mean, seconds, share = (cell.strip() for cell in rows[name])
        assert 0 <= float(top1) == float(mean) <= 100 and float(seconds) > 0
        assert (share != "-") == (name == "simple_cnn online")
