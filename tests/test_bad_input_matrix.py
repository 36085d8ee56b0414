"""Bad input, in one place: each case is a command a user might type on a broken setup, with the exit
code it must end with and the first line of the message it must print (a regex, searched).

Cases run as real processes (``python main.py ...`` or a tool script) in a fresh folder, so what is
checked is exactly what a user sees: the exit code, the first error line on stderr, and no traceback.
A case's ``setup(tmp, data)`` builds what it needs under ``tmp`` from the tiny folder dataset ``data``
(read-only: copy before changing) and returns the argument list; ``check(tmp)``, when given, asserts
what must (not) be on disk afterwards.
"""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest

from conftest import ROOT, TINY_SIZE


@dataclass(frozen=True)
class Case:
    id: str
    setup: Callable[[Path, Path], list[str]]
    code: int
    first_line: str  # regex searched in the first line of stderr that says ERROR (or the first line at all)
    script: str = "main.py"
    check: Callable[[Path], None] | None = None


def tiny_train(data: Path, out: Path, *extra: str) -> list[str]:
    return ["--train", "--data", str(data), "--arch", "resnet18", "--image_size", str(TINY_SIZE), str(TINY_SIZE),
            "-b", "8", "-j", "0", "--epochs", "1", "--lr", "0.05", "--warmup", "0", "--output", str(out),
            "--no_progress", *extra]


def copy_data(data: Path, tmp: Path) -> Path:
    return shutil.copytree(data, tmp / "data")


def first_error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    errors = [line for line in lines if " ERROR " in line or line.startswith(("error", "main.py: error"))
              or ": error:" in line]
    return (errors or lines or [""])[0]


CASES: list[Case] = []

# ==== flags and config values ====

CASES += [
    Case("unknown-arch", lambda tmp, data: tiny_train(data, tmp / "out", "--arch", "resnet181"), 1,
         r"unknown model 'resnet181'.*resnet18"),
]

# ==== run directories: paths, --overwrite, stale best, locks ====

# ==== decompression bombs and image limits ====

# ==== non-finite numbers, one-line messages, silent acceptance ====

# ==== correctness round (mnasnet, sync BN, LR finder, CAM, DDP evaluation) ====

# ==== experiments: compare, sweep, search ====

def sweep_setup(body: str, *extra: str) -> Callable[[Path, Path], list[str]]:
    def setup(tmp: Path, data: Path) -> list[str]:
        (tmp / "s.yaml").write_text(body)
        return ["--sweep", str(tmp / "s.yaml"), "--output", str(tmp / "out"), *extra]
    return setup


def nothing_written(tmp: Path) -> None:
    assert not (tmp / "out").exists()


CASES += [
    Case("sweep-unknown-flag", sweep_setup("grid: {lrr: [0.1, 0.2]}\n"), 1,
         r"--sweep: .*s\.yaml: grid: unknown key 'lrr' \(did you mean lr", check=nothing_written),
    Case("sweep-two-kinds", sweep_setup("grid: {lr: [0.1]}\nvariants: {a: {}}\n"), 1,
         r"needs exactly one of grid:, variants:, search:", check=nothing_written),
    Case("sweep-bad-variant-combination", sweep_setup("base: {epochs: 2}\nvariants: {long_warmup: {warmup: 5}}\n"),
         1, r"--sweep: variant long_warmup: --warmup \(5.0 epochs\) must be shorter than --epochs \(2\)",
         check=nothing_written),
    Case("search-without-trials", sweep_setup("search: {lr: {low: 0.001, high: 0.1, log: true}}\n"), 1,
         r"has a search space: give the number of trials"),
    Case("sweep-devices-bad", sweep_setup("grid: {lr: [0.1]}\n", "--sweep_devices", "0,gpu1"), 2,
         r"--sweep_devices must be comma-separated CUDA indices or cpu"),
    Case("trials-without-sweep", lambda tmp, data: ["--train", "--trials", "3"], 2, r"--trials is a --sweep option"),
    Case("compare-missing", lambda tmp, data: ["--compare", str(tmp / "no_such_runs")], 1,
         r"--compare: '.*no_such_runs' does not exist"),
    Case("compare-no-runs", lambda tmp, data: ["--compare", str(data)], 1,
         r"--compare: no run directories \(folders with a config\.yaml\) under"),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case: Case, tiny_data, tmp_path):
    args = case.setup(tmp_path, tiny_data["folder"])
    r = subprocess.run([sys.executable, str(ROOT / case.script), *args], cwd=tmp_path, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == case.code, (r.returncode, r.stderr[-3000:])
    assert "Traceback" not in r.stderr, r.stderr[-3000:]
    line = first_error_line(r.stderr)
    assert re.search(case.first_line, line), (line, r.stderr[-3000:])
    if case.check is not None:
        case.check(tmp_path)


def test_cases_have_unique_ids():
    ids = [c.id for c in CASES]
    assert len(ids) == len(set(ids))
