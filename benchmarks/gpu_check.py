"""The GPU path checked in one prepared run: one command, one JSON file and one markdown table.

A GPU machine is lent for minutes, so everything that needs CUDA is measured by this one script, within
8 minutes on one GPU (``--budget``), in five sections:

  context     the device: GPU name, memory, SMs, compute capability, clocks and driver (nvidia-smi when
              present), CUDA, cuDNN, torch, the CPU
  precision   ``pytest -m cuda`` (the CUDA-only tests), and ``main.py --train`` on the bundled digits for
              each precision path, all at once: fp32, bf16 ``--amp``, fp16 ``--amp`` (the GradScaler),
              ``--channels_last``, ``--compile``; each must finish with a test top-1 within ``--band``
              points of fp32's
  resnet50    224x224 synthetic uint8 batches of 256, bf16 + channels-last: training img/s of our
              ``train_one_epoch`` (fed by the decoded-cache loader) against a plain PyTorch loop on the
              same model, and timm's resnet50 in the same plain loop (the peer); inference img/s (our
              ``evaluate`` against plain); the GPU clocks under load
  input_path  photo-set JPEGs (``make_photo_set.py``, made in the background while the first sections
              run): CPU decode workers against ``--gpu_decode`` (nvjpeg), loader img/s and img/s into
              resnet50; the digits through CPU workers against ``--cache_dataset memory`` on the GPU
  ddp         ``torchrun --nproc_per_node=1 main.py --train --sync_bn`` for one epoch (NCCL)

Published anchors are printed next to the resnet50 training numbers (see ``ANCHORS``). This file is the
driver; each section's code is in ``benchmarks/gpu_sections/<section>.py``.

Each section runs in its own process with a time box (the boxes add up to the budget): a section that
fails, crashes or overruns its box is recorded with its error and the rows it finished, the others
still run, and the exit code is 1. ``--quick`` runs the same code on the CPU at tiny sizes; what needs
CUDA says "skipped: no CUDA" (tests/unit/test_gpu_check.py and tests/e2e/test_gpu_check.py run it).

    python benchmarks/gpu_check.py --out gpu_check                 # on a GPU: about 7 minutes
    python benchmarks/gpu_check.py --quick --out /tmp/gpu_check    # the CPU smoke run, 1-2 minutes
    python benchmarks/gpu_check.py --sections resnet50 --out ...   # one section again
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.gpu_sections.common import (
    ANCHOR_TEXT,
    ANCHORS,
    FULL,
    NO_CUDA,
    QUICK,
    SECTIONS,
    TITLES,
    Ctx,
    Record,
    last_error,
)
from benchmarks.gpu_sections.context import section_context
from benchmarks.gpu_sections.ddp import section_ddp
from benchmarks.gpu_sections.input_path import section_input_path
from benchmarks.gpu_sections.precision import PRECISION_PATHS, cuda_test_files, section_precision
from benchmarks.gpu_sections.resnet50 import section_resnet50
from utils.atomic import write_json_atomic, write_text_atomic

__all__ = ["NO_CUDA", "PRECISION_PATHS", "SECTIONS", "SECTION_FUNCS", "cuda_test_files", "main"]


SECTION_FUNCS: dict[str, Callable[[Ctx], None]] = {
    "context": section_context, "precision": section_precision, "resnet50": section_resnet50,
    "input_path": section_input_path, "ddp": section_ddp}


# ---------------------------------------------------------------------------------------------------
# the driver: one process per section, each in its time box, and the report


def run_section_process(args: argparse.Namespace) -> int:
    """``--section NAME``: run one section in this process, recording into ``--part``."""
    import logging
    logging.basicConfig(level=logging.WARNING)
    rec = Record(args.part)
    ctx = Ctx(QUICK if args.quick else FULL, args, rec, deadline=time.time() + args.box_s)
    try:
        SECTION_FUNCS[args.section](ctx)
        rec.data["status"] = "ok"
        return_code = 0
    except Exception as e:  # recorded, and the driver goes on with the next section
        traceback.print_exc()
        rec.data.update(status="failed", error=f"{type(e).__name__}: {e}")
        return_code = 1
    rec.write()
    return return_code


def section_command(args: argparse.Namespace, name: str, part: Path, box: float) -> list[str]:
    return [sys.executable, str(Path(__file__).resolve()), "--section", name, "--part", str(part), "--box_s",
            str(box), "--digits", str(args.digits), "--photos", str(args.photos), "--band", str(args.band),
            *(["--quick"] if args.quick else [])]


def drive(args: argparse.Namespace) -> dict[str, Any]:
    prof = QUICK if args.quick else FULL
    out: Path = args.out
    (out / "logs").mkdir(parents=True, exist_ok=True)
    start = time.time()
    deadline = start + args.budget
    report: dict[str, Any] = {
        "tool": "benchmarks/gpu_check.py", "command": "python benchmarks/gpu_check.py " + " ".join(args.argv),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "mode": prof.name,
        "device": "unknown (the context section did not run)", "budget_s": args.budget, "anchors": ANCHORS,
        "sections": {}}
    photo_maker = None
    if "input_path" in args.sections:  # the JPEGs are written while the sections before input_path run
        photo_maker = subprocess.Popen(
            [sys.executable, str(ROOT / "benchmarks" / "make_photo_set.py"), "--out", str(args.photos),
             "--train_per_class", str(prof.photos_per_class), "--val_per_class", "1", "--classes",
             str(prof.photo_classes)], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True)
    for name in args.sections:
        requested, left = args.box.get(name, prof.boxes[name]), deadline - time.time()
        box = min(requested, left)
        entry: dict[str, Any] = {"title": TITLES[name], "box_s": round(box, 1)}
        report["sections"][name] = entry
        if left < min(requested, 5):
            entry.update(status="skipped", error=f"the global time budget ({args.budget:g} s) was spent",
                         rows=[], notes=[], seconds=0)
        else:
            run_section(args, name, box, entry, photo_maker if name == "input_path" else None)
        if name == "context" and "device" in entry:
            report["device"] = entry.pop("device")
        report["wall_s"] = round(time.time() - start, 1)
        report["failed"] = [n for n, s in report["sections"].items() if s["status"] != "ok"]
        write_report(out, report)
    if photo_maker is not None and photo_maker.poll() is None:
        kill_group(photo_maker.pid)
    return report


def run_section(args: argparse.Namespace, name: str, box: float, entry: dict[str, Any],
                photo_maker: subprocess.Popen | None) -> None:
    """Run one section's process within ``box`` seconds and fill ``entry`` with its record and status."""
    out: Path = args.out
    part = out / "logs" / f"{name}.json"
    part.unlink(missing_ok=True)
    t0 = time.time()
    with open(out / "logs" / f"{name}.log", "w") as log:
        if photo_maker is not None:  # input_path: the JPEGs made in the background
            wait_quietly(photo_maker, box)
        proc = subprocess.Popen(section_command(args, name, part, max(1.0, box - (time.time() - t0))), cwd=ROOT,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        timed_out = not wait_quietly(proc, max(0.0, box - (time.time() - t0)))
        kill_group(proc.pid)  # what a failed section left running (its trainings, torchrun)
    entry.update(json.loads(part.read_text()) if part.is_file() else {"rows": [], "notes": []})
    entry["seconds"] = round(time.time() - t0, 1)
    if timed_out:
        entry.update(status="timeout", error=f"exceeded its box of {box:.0f} s and was stopped; "
                                             f"the rows it finished are kept")
    elif entry.get("status") != "ok":
        entry["status"] = "failed"
        entry.setdefault("error", f"the section process exited {proc.returncode} "
                                  f"(see logs/{name}.log): {last_error((out / 'logs' / f'{name}.log').read_text())}")


def wait_quietly(proc: subprocess.Popen, timeout: float) -> bool:
    """Wait up to ``timeout`` s; past it, kill the process and everything it started. True if it ended."""
    try:
        proc.wait(timeout=timeout)
        return True
    except subprocess.TimeoutExpired:
        kill_group(proc.pid)
        proc.wait()
        return False


def kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:  # nothing of it is left
        pass


def fmt(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "**no**"
    if isinstance(value, float):
        return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.2f}"
    if isinstance(value, dict):
        return ", ".join(f"{k} {v}" for k, v in value.items())
    return "" if value is None else str(value).replace("|", "/")


def markdown(report: dict[str, Any]) -> str:
    lines = [f"# GPU check: {report['date']}, {report['device']}", "",
             f"`{report['command']}`: {report['mode']} run, {report.get('wall_s', 0):g} s of a "
             f"{report['budget_s']:g} s budget; "
             + (f"**failed: {', '.join(report['failed'])}**" if report.get("failed") else "every section ok") + ".",
             "", f"Anchors, resnet50 AMP training: {ANCHOR_TEXT}.", ""]
    for name, s in report["sections"].items():
        lines += [f"## {name}: {s['title']}", "",
                  f"Status **{s['status']}** after {s.get('seconds', 0):g} s (box {s['box_s']:g} s)."
                  + (f" Error: {s['error']}" if s.get("error") else ""), ""]
        rows = s.get("rows", [])
        if rows:
            keys = list(dict.fromkeys(k for r in rows for k in r))
            lines += ["| " + " | ".join(header(k) for k in keys) + " |", "|" + "---|" * len(keys)]
            lines += ["| " + " | ".join(fmt_cell(k, r.get(k)) for k in keys) + " |" for r in rows]
            lines.append("")
        extras = {k: v for k, v in s.items() if k in ("band", "clocks_under_load")}
        lines += [f"- {k.replace('_', ' ')}: {fmt(v)}" for k, v in extras.items()]
        lines += [f"- {note}" for note in s.get("notes", [])]
        lines.append("")
    return "\n".join(lines)


def header(key: str) -> str:
    return key.replace("img_s", "img/s").replace("top1", "top-1").replace("_gib", " (GiB)").replace("_", " ")


def fmt_cell(key: str, value: Any) -> str:
    if key.startswith("vs_") and isinstance(value, float):
        return f"{value:.2f}x"
    return fmt(value)


def write_report(out: Path, report: dict[str, Any]) -> None:
    write_json_atomic(out / "gpu_check.json", report, indent=2, default=str)
    write_text_atomic(out / "gpu_check.md", markdown(report))


def parse_box(text: str) -> tuple[str, float]:
    name, _, seconds = text.partition("=")
    if name not in SECTIONS or not seconds:
        raise argparse.ArgumentTypeError(f"--box takes SECTION=SECONDS with SECTION one of {', '.join(SECTIONS)}, "
                                         f"got {text!r}")
    return name, float(seconds)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("gpu_check"), help="folder for gpu_check.json, gpu_check.md, logs/")
    p.add_argument("--quick", action="store_true",
                   help="the same code at tiny sizes, on the CPU when there is no GPU (a smoke run)")
    p.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS), metavar="SECTION",
                   help=f"the sections to run, in this order (default all: {' '.join(SECTIONS)})")
    p.add_argument("--budget", type=float, default=None,
                   help=f"seconds for the whole run (default {sum(FULL.boxes.values()) + 10:g}; --quick "
                        f"{sum(QUICK.boxes.values()):g}); a section gets at most what is left")
    p.add_argument("--box", type=parse_box, action="append", default=[], metavar="SECTION=SECONDS",
                   help="another time box for a section")
    p.add_argument("--digits", type=Path, default=ROOT / "data" / "digits", help="the digits (class folders)")
    p.add_argument("--photos", type=Path, default=ROOT / "data" / "photos_gpu_check",
                   help="where make_photo_set.py writes the JPEGs (kept for reruns)")
    p.add_argument("--band", type=float, default=3.0,
                   help="precision paths: test top-1 within this many points of fp32")
    p.add_argument("--section", choices=SECTIONS, help=argparse.SUPPRESS)  # one section's own process
    p.add_argument("--part", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--box_s", type=float, default=600.0, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    # the sections run in the repository root: the paths the user gave are resolved where they were typed
    for key in ("out", "digits", "photos", "part"):
        if getattr(args, key) is not None:
            setattr(args, key, getattr(args, key).resolve())
    if args.section:
        return run_section_process(args)
    args.argv = argv
    args.box = dict(args.box)
    prof = QUICK if args.quick else FULL
    args.budget = args.budget if args.budget is not None else sum(prof.boxes.values()) + (0 if args.quick else 10)
    report = drive(args)
    print((args.out / "gpu_check.md").read_text())
    print(f"wrote {args.out / 'gpu_check.json'} and {args.out / 'gpu_check.md'}", file=sys.stderr)
    return 1 if report.get("failed") else 0


if __name__ == "__main__":
    sys.exit(main())
