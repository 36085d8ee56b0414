"""benchmarks/gpu_check.py: its --quick run as a real process (every section, finite positive numbers, the
CUDA-only parts marked as skipped), a failing and an overrunning section, and the cuda test marker."""
from __future__ import annotations

import json
import math
import re

import pytest
import torch

from benchmarks import gpu_check
from helpers import run_gpu_check

CUDA = torch.cuda.is_available()


def _numbers(value, key=""):
    """Every (key, number) inside a row, nested dicts included (booleans are not numbers here)."""
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _numbers(v, k)
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        yield key, value


@pytest.mark.slow
def test_quick_run_writes_every_section(tmp_path, tiny_data):
    out = tmp_path / "report"
    r = run_gpu_check("--quick", "--out", str(out), "--digits", str(tiny_data["folder"]),
                      "--photos", str(tmp_path / "photos"))
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    report = json.loads((out / "gpu_check.json").read_text())
    assert report["mode"] == "quick" and report["failed"] == [] and 0 < report["wall_s"] <= report["budget_s"]
    assert list(report["sections"]) == list(gpu_check.SECTIONS)
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d UTC", report["date"])
    assert report["device"] != "unknown" and report["device"].startswith("cpu: ") != CUDA
    for name, section in report["sections"].items():
        assert section["status"] == "ok", (name, section.get("error"))
        assert 0 < section["seconds"] <= section["box_s"] and section["rows"], name
        for row in section["rows"]:
            for key, value in _numbers(row):
                assert math.isfinite(value), (name, key, row)
                if "top1" in key:
                    assert 0 <= value <= 100, (name, key, row)
                elif key not in ("skipped", "failed", "passed"):  # counts of tests may be 0
                    assert value > 0, (name, key, row)
    s = report["sections"]

    context = {row["key"]: row["value"] for row in s["context"]["rows"]}
    assert context["torch"] == torch.__version__ and context["CPU cores available"] >= 1
    assert (context["GPU"] == gpu_check.NO_CUDA) != CUDA and (context["GPU memory (GiB)"] == gpu_check.NO_CUDA) != CUDA

    precision = {row["path"]: row for row in s["precision"]["rows"]}
    assert list(precision) == ["pytest -m cuda", *gpu_check.PRECISION_PATHS]
    cuda_tests = precision["pytest -m cuda"]
    assert cuda_tests["tests"]["run"] == 2 and cuda_tests["tests"]["failed"] == 0
    assert cuda_tests["status"] == ("ok" if CUDA else gpu_check.NO_CUDA)
    for path in gpu_check.PRECISION_PATHS:
        row = precision[path]
        assert row["status"] == "ok" and row["train_img_s"] > 0 and isinstance(row["in_band"], bool)
    assert "not enforced in --quick" in s["precision"]["band"]

    bench = {(row["mode"], row["side"]): row for row in s["resnet50"]["rows"]}
    ours, plain = bench[("train", "ours: train_one_epoch + cached loader")], bench[("train", "plain loop")]
    assert ours["vs_plain"] == pytest.approx(ours["img_s"] / plain["img_s"]) and plain["vs_plain"] == 1.0
    assert bench[("train", "plain loop, timm's model (peer)")]["model"] == "timm resnet18"
    assert {mode for mode, _ in bench} == {"train", "inference"}
    benchmark_on = bench[("train", "plain loop, cudnn.benchmark on")]
    assert (benchmark_on["img_s"] == gpu_check.NO_CUDA) != CUDA and (ours["peak_mem_gib"] == gpu_check.NO_CUDA) != CUDA
    assert (s["resnet50"]["clocks_under_load"] == gpu_check.NO_CUDA) != CUDA

    inputs = {(row["data"].split(":")[0], row["path"]): row for row in s["input_path"]["rows"]}
    assert list(inputs) == [("photos", "CPU decode workers"), ("photos", "--gpu_decode"),
                            ("digits", "CPU decode workers"), ("digits", "--cache_dataset memory")]
    assert inputs[("photos", "CPU decode workers")]["data"] == "photos: 32 images"  # 4 classes x 8 JPEGs
    for key in (("photos", "--gpu_decode"), ("digits", "--cache_dataset memory")):
        assert ("skipped" in inputs[key]) != CUDA
        assert CUDA or gpu_check.NO_CUDA in inputs[key]["skipped"]

    (ddp,) = s["ddp"]["rows"]
    assert ddp["backend"] == ("nccl" if CUDA else "gloo") and ddp["processes"] == 1 and ddp["ddp"] is True
    assert ddp["sync_bn"] is True if CUDA else ddp["sync_bn"].startswith(gpu_check.NO_CUDA)

    md = (out / "gpu_check.md").read_text()
    assert md.startswith(f"# GPU check: {report['date']}, {report['device']}\n")
    assert "A100 about 2,500 img/s (NVIDIA's published figure)" in md and "H100 2,600-2,800" in md
    for name, section in s.items():
        assert f"## {name}: {section['title']}\n" in md and "Status **ok**" in md
        table = md.split(f"## {name}:")[1].split("\n## ")[0]
        assert sum(line.startswith("| ") for line in table.splitlines()) == len(section["rows"]) + 1  # + header
    assert (gpu_check.NO_CUDA in md) != CUDA
    assert r.stdout.strip() == md.strip()  # the table is also printed


@pytest.mark.slow
def test_a_failing_and_an_overrunning_section_are_recorded_and_the_rest_runs(tmp_path):
    out = tmp_path / "report"
    r = run_gpu_check("--quick", "--out", str(out), "--sections", "precision", "resnet50", "context",
             "--digits", str(tmp_path / "no_digits"), "--box", "resnet50=2", timeout=600)
    assert r.returncode == 1
    report = json.loads((out / "gpu_check.json").read_text())
    s = report["sections"]
    assert list(s) == ["precision", "resnet50", "context"] and report["failed"] == ["precision", "resnet50"]
    assert s["precision"]["status"] == "failed"
    assert s["precision"]["error"].startswith(f"FileNotFoundError: --digits {tmp_path / 'no_digits'} has no train/")
    assert s["resnet50"]["status"] == "timeout" and s["resnet50"]["box_s"] == 2
    assert s["resnet50"]["error"] == "exceeded its box of 2 s and was stopped; the rows it finished are kept"
    assert s["context"]["status"] == "ok" and s["context"]["rows"]
    md = (out / "gpu_check.md").read_text()
    assert "**failed: precision, resnet50**" in md and "Status **timeout**" in md
    assert "Error: FileNotFoundError: --digits" in md
    assert "Traceback" in (out / "logs" / "precision.log").read_text()  # the details stay in the section's log
