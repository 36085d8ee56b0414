"""The ``precision`` section: ``pytest -m cuda`` and ``main.py --train`` on the bundled digits per
precision path, all at once."""
from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

from benchmarks.gpu_sections.common import NO_CUDA, ROOT, Ctx, digits_train_args, last_error, run_summary

PRECISION_PATHS = {"fp32": [], "bf16 --amp": ["--amp", "--amp_dtype", "bf16"],
                   "fp16 --amp (GradScaler)": ["--amp", "--amp_dtype", "fp16"],
                   "--channels_last": ["--channels_last"], "--compile": ["--compile"]}


def cuda_test_files() -> list[str]:
    """The test files that hold a ``@pytest.mark.cuda`` test (the decorator at the start of a line)."""
    return sorted(str(f.relative_to(ROOT)) for f in (ROOT / "tests").rglob("test_*.py")
                  if re.search(r"^\s*@pytest\.mark\.cuda\b", f.read_text(), re.M))


def pytest_row(junit: Path, returncode: int, output: str, seconds: float, cuda: bool) -> dict[str, Any]:
    """The outcome of ``pytest -m cuda`` from its JUnit report; all skipped without CUDA is "skipped: no CUDA"."""
    if not junit.is_file():
        raise RuntimeError(f"pytest -m cuda wrote no report (exit {returncode}): {last_error(output)}")
    suite = ET.parse(junit).getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    n = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    passed = n["tests"] - n["failures"] - n["errors"] - n["skipped"]
    failed = n["failures"] + n["errors"]
    status = "ok" if not failed and n["tests"] else "failed"
    if not cuda and not failed and n["skipped"] == n["tests"]:
        status = NO_CUDA
    return {"path": "pytest -m cuda", "flags": " ".join(cuda_test_files()), "status": status,
            "seconds": round(seconds, 1),
            "tests": {"run": n["tests"], "passed": passed, "skipped": n["skipped"], "failed": failed}}


def section_precision(ctx: Ctx) -> None:
    files = cuda_test_files()
    if not files:
        raise RuntimeError("no test carries @pytest.mark.cuda (see pytest.ini)")
    with tempfile.TemporaryDirectory(prefix="gpu_check_precision_") as tmp:
        out = Path(tmp)
        jobs: dict[str, list[str]] = {"pytest -m cuda": [
            "-m", "pytest", "-m", "cuda", "-q", "-p", "no:cacheprovider", "--junitxml", str(out / "cuda.xml"), *files]}
        for i, (name, flags) in enumerate(PRECISION_PATHS.items()):
            jobs[name] = [str(ROOT / "main.py"), *digits_train_args(ctx, out, f"p{i}", ctx.prof.epochs), *flags]
        threads = str(max(1, ctx.workers() // len(jobs)))
        fp32 = None
        env = {**os.environ, "OMP_NUM_THREADS": threads}
        start = time.time()
        procs = {name: subprocess.Popen([sys.executable, *cmd], cwd=ROOT, stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT, text=True, env=env) for name, cmd in jobs.items()}
        ended = wait_all(procs, stop_at=ctx.deadline - 5)  # name -> (output, seconds) of those that ended
        errors = [f"{name}: still running after {time.time() - start:.0f} s, stopped" for name in procs
                  if name not in ended]
        for name in procs:
            if name == "pytest -m cuda":
                if name not in ended:
                    ctx.rec.row(path=name, flags=" ".join(files), status="timeout")
                    continue
                output, seconds = ended[name]
                row = ctx.rec.row(**pytest_row(out / "cuda.xml", procs[name].returncode, output, seconds, ctx.cuda))
                if row["status"] == "failed":
                    errors.append(f"pytest -m cuda: {row['tests']['failed']} of {row['tests']['run']} failed: "
                                  f"{last_error(output)}")
                continue
            i = list(PRECISION_PATHS).index(name)
            row = {"path": name, "flags": " ".join(PRECISION_PATHS[name]) or "(none)"}
            if name not in ended:
                ctx.rec.row(**row, status="timeout")
                continue
            output, seconds = ended[name]
            if procs[name].returncode != 0:
                errors.append(f"{name}: main.py exited {procs[name].returncode}: {last_error(output)}")
                ctx.rec.row(**row, status="failed", error=last_error(output))
                continue
            summary = run_summary(out, ctx.prof.digits_arch, f"p{i}")
            fp32 = summary["test_top1"] if name == "fp32" else fp32
            in_band = fp32 is not None and abs(summary["test_top1"] - fp32) <= ctx.args.band
            if not in_band and ctx.prof.band_enforced:
                errors.append(f"{name}: test top-1 {summary['test_top1']:.2f} is outside the band "
                              f"(fp32 {fp32 if fp32 is not None else float('nan'):.2f} +- {ctx.args.band:g})")
            ctx.rec.row(**row, status="ok", seconds=round(seconds, 1), **summary, in_band=in_band)
        rec = ctx.rec.data
        rec["band"] = f"test top-1 within {ctx.args.band:g} points of fp32's" + (
            "" if ctx.prof.band_enforced else " (reported, not enforced in --quick: one epoch on a tiny set)")
        ctx.rec.note(f"{ctx.prof.epochs} epochs of {ctx.prof.digits_arch} at {ctx.prof.digits_size}x"
                     f"{ctx.prof.digits_size}, batch {ctx.prof.digits_batch}, the quickstart recipe "
                     f"(--cache_dataset memory: the digits decoded once onto {ctx.device}); the {len(jobs)} "
                     f"processes run at the same time, so their img/s share the device")
        if errors:
            raise RuntimeError("; ".join(errors))


def wait_all(procs: dict[str, subprocess.Popen], stop_at: float) -> dict[str, tuple[str, float]]:
    """Wait for processes running side by side, reading their output as they go; at ``stop_at`` kill those
    still running. Returns ``name -> (output, seconds)`` of those that ended by themselves."""
    import threading
    start, outputs, ended = time.time(), {}, {}
    readers = [threading.Thread(target=lambda n=n, p=p: outputs.__setitem__(n, p.stdout.read()), daemon=True)
               for n, p in procs.items()]
    for t in readers:
        t.start()
    while len(ended) < len(procs) and time.time() < stop_at:
        for name, proc in procs.items():
            if name not in ended and proc.poll() is not None:
                ended[name] = time.time() - start
        time.sleep(0.2)
    for name, proc in procs.items():
        if name not in ended:
            proc.kill()
        proc.wait()
    for t in readers:
        t.join(timeout=10)
    return {name: (outputs.get(name, ""), seconds) for name, seconds in ended.items()}
