"""benchmarks/gpu_check.py: its --quick run as a real process (every section, finite positive numbers, the
CUDA-only parts marked as skipped), a failing and an overrunning section, and the cuda test marker."""
from __future__ import annotations

import json
import re

import pytest

from benchmarks import gpu_check
from helpers import ROOT, run_gpu_check


def test_every_cuda_only_test_carries_the_cuda_marker():
    skipping = set()
    for f in (ROOT / "tests").rglob("test_*.py"):
        text = f.read_text()
        for m in re.finditer(r"@pytest\.mark\.skipif\(not torch\.cuda\.is_available\(\)", text):
            before = text[:m.start()].rstrip().splitlines()[-1]
            assert before == "@pytest.mark.cuda", f"{f.name}: a CUDA-only test without @pytest.mark.cuda"
            skipping.add(str(f.relative_to(ROOT)))
    assert skipping and sorted(skipping) == gpu_check.cuda_test_files()  # what gpu_check.py hands to pytest -m cuda
    assert "cuda:" in (ROOT / "pytest.ini").read_text()


def test_bad_box_is_a_clear_error(capsys):
    with pytest.raises(SystemExit) as e:
        gpu_check.main(["--box", "warp=10"])
    assert e.value.code == 2
    assert "--box takes SECTION=SECONDS with SECTION one of context, precision" in capsys.readouterr().err


def test_sections_the_global_budget_cannot_fit_are_skipped(tmp_path):
    r = run_gpu_check("--quick", "--out", str(tmp_path), "--sections", "context", "ddp", "--budget", "1", timeout=120)
    assert r.returncode == 1
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    for name, title in (("context", "Context"), ("ddp", "torchrun, one process")):
        assert report["sections"][name] == {"title": title, "box_s": report["sections"][name]["box_s"],
                                            "status": "skipped", "error": "the global time budget (1 s) was spent",
                                            "rows": [], "notes": [], "seconds": 0}
    assert report["failed"] == ["context", "ddp"] and report["device"].startswith("unknown")
    assert "Status **skipped** after 0 s" in (tmp_path / "gpu_check.md").read_text()


def test_a_relative_out_from_another_folder_lands_there_and_the_sections_find_it(tmp_path):
    """Started outside the repository with the default relative --out, every section failed: they run in the
    repository root and could not find gpu_check/logs/*.json.tmp."""
    r = run_gpu_check("--quick", "--sections", "context", cwd=tmp_path, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    report = json.loads((tmp_path / "gpu_check" / "gpu_check.json").read_text())
    assert report["sections"]["context"]["status"] == "ok" and report["failed"] == []
