"""Benchmark scripts run in their --quick mode (that they work, not their numbers)."""
from __future__ import annotations

import subprocess
import sys

import pytest

from conftest import ROOT


@pytest.mark.slow
def test_loss_options_quick():
    r = subprocess.run([sys.executable, "benchmarks/loss_options.py", "--quick"], cwd=ROOT, capture_output=True,
                       text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-2000:]
    rows = [line for line in r.stdout.splitlines() if line.startswith("| softmax (baseline)") or line.startswith("| bce + ghm")]
    assert len(rows) == 2 and all(0 <= float(row.split("|")[3]) <= 100 for row in rows)
