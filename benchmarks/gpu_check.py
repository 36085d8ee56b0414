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

Published anchors are printed next to the resnet50 training numbers (see ``ANCHORS``).

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
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.make_photo_set import SOURCES  # noqa: E402
from benchmarks.time_to_accuracy import RECIPE  # noqa: E402

NO_CUDA = "skipped: no CUDA"
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
ANCHORS = [
    {"gpu": "A100", "resnet50_amp_train_img_s": "about 2,500", "source": "NVIDIA's published figure"},
    {"gpu": "H100", "resnet50_amp_train_img_s": "2,600-2,800", "source": "public benchmark runs"},
]
ANCHOR_TEXT = "; ".join(f"{a['gpu']} {a['resnet50_amp_train_img_s']} img/s ({a['source']})" for a in ANCHORS)
ANCHOR_SHORT = "resnet50: " + " / ".join(f"{a['gpu']} {a['resnet50_amp_train_img_s']}" for a in ANCHORS)


@dataclass(frozen=True)
class Profile:
    """Sizes of one kind of run: the full GPU check or the tiny CPU smoke run (``--quick``)."""
    name: str
    boxes: dict[str, float]  # seconds per section
    digits_arch: str = "resnet18"
    digits_size: int = 32
    digits_batch: int = 64
    epochs: int = 8
    band_enforced: bool = True
    bench_arch: str = "resnet50"  # the side-by-side model: ours and the plain loop, and timm's of the same name
    r50_size: int = 224
    r50_batch: int = 256
    r50_batches: int = 8  # distinct synthetic batches (one epoch)
    r50_epochs: int = 4  # timed epochs, after one warm-up epoch
    photos_per_class: int = 250
    photo_classes: int = len(SOURCES)
    photo_size: int = 224
    photo_batch: int = 256
    photo_arch: str = "resnet50"
    workers: int | None = None  # None: the available cores


FULL = Profile("full", boxes={"context": 20, "precision": 180, "resnet50": 90, "input_path": 130, "ddp": 50})
QUICK = Profile("quick", boxes={"context": 120, "precision": 400, "resnet50": 200, "input_path": 200, "ddp": 200},
                digits_arch="simple_cnn", digits_size=16, digits_batch=8, epochs=1, band_enforced=False,
                bench_arch="resnet18", r50_size=32, r50_batch=4, r50_batches=1, r50_epochs=1, photos_per_class=8,
                photo_classes=4, photo_size=64, photo_batch=8, photo_arch="simple_cnn", workers=1)
SECTIONS = ("context", "precision", "resnet50", "input_path", "ddp")
TITLES = {"context": "Context", "precision": "CUDA tests and precision paths (bundled digits)",
          "resnet50": "resnet50 side by side (synthetic uint8 batches)",
          "input_path": "Input path (photo-set JPEGs, cached digits)", "ddp": "torchrun, one process"}


# ---------------------------------------------------------------------------------------------------
# the record a section process writes (after every row, so a killed section keeps what it finished)


@dataclass
class Record:
    """A section's result (status, rows, notes), rewritten to ``path`` whenever it grows."""
    path: Path
    data: dict[str, Any] = field(default_factory=lambda: {"status": "running", "rows": [], "notes": []})

    def write(self) -> None:
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps(self.data, indent=2, default=str))
        tmp.replace(self.path)

    def row(self, **values: Any) -> dict[str, Any]:
        self.data["rows"].append(values)
        self.write()
        return values

    def note(self, text: str) -> None:
        self.data["notes"].append(text)
        self.write()


@dataclass
class Ctx:
    """What a section needs: its profile, paths, device and its record."""
    prof: Profile
    args: argparse.Namespace
    rec: Record
    deadline: float

    @property
    def cuda(self) -> bool:
        import torch
        return torch.cuda.is_available()

    @property
    def device(self):
        import torch
        return torch.device("cuda" if self.cuda else "cpu")

    def left(self) -> float:
        return max(1.0, self.deadline - time.time())

    def workers(self) -> int:
        from config import available_cores
        return self.prof.workers if self.prof.workers is not None else available_cores()

    def sync(self) -> None:
        import torch
        if self.cuda:
            torch.cuda.synchronize()

    def cuda_only(self, value: Callable[[], Any]) -> Any:
        return value() if self.cuda else NO_CUDA


def finite(x: float) -> float:
    if not math.isfinite(x):
        raise FloatingPointError(f"a measurement came out as {x}")
    return x


# ---------------------------------------------------------------------------------------------------
# context


def nvidia_smi(fields: str) -> dict[str, str] | str:
    """One ``nvidia-smi --query-gpu`` reading of the first GPU, or why there is none."""
    if shutil.which("nvidia-smi") is None:
        return "skipped: nvidia-smi not on PATH"
    r = subprocess.run(["nvidia-smi", f"--query-gpu={fields}", "--format=csv,noheader"], capture_output=True,
                       text=True, timeout=30)
    if r.returncode != 0:
        return f"nvidia-smi failed: {r.stderr.strip()[:200]}"
    return dict(zip(fields.split(","), (v.strip() for v in r.stdout.splitlines()[0].split(","))))


CLOCKS = "clocks.sm,clocks.max.sm,clocks.mem,power.draw,temperature.gpu"


def cpu_name() -> str:
    import platform
    info = Path("/proc/cpuinfo")
    lines = info.read_text().splitlines() if info.is_file() else []
    return next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")),
                platform.processor() or platform.machine())


def section_context(ctx: Ctx) -> None:
    import platform
    import torch
    from config import available_cores
    cpu = cpu_name()
    props = torch.cuda.get_device_properties(0) if ctx.cuda else None
    ctx.rec.data["device"] = props.name if props else f"cpu: {cpu}"
    rows = [("GPU", ctx.cuda_only(lambda: props.name)), ("GPUs visible", ctx.cuda_only(torch.cuda.device_count)),
            ("GPU memory (GiB)", ctx.cuda_only(lambda: round(props.total_memory / 2**30, 1))),
            ("SMs", ctx.cuda_only(lambda: props.multi_processor_count)),
            ("compute capability", ctx.cuda_only(lambda: f"{props.major}.{props.minor}")),
            ("CUDA runtime (torch)", ctx.cuda_only(lambda: torch.version.cuda)),
            ("cuDNN", ctx.cuda_only(lambda: torch.backends.cudnn.version())),
            ("bf16 supported", ctx.cuda_only(torch.cuda.is_bf16_supported)),
            ("nvidia-smi at start", ctx.cuda_only(lambda: nvidia_smi("driver_version,power.limit," + CLOCKS))),
            ("torch", torch.__version__), ("CPU", cpu), ("CPU cores available", available_cores()),
            ("/dev/shm (GiB, the loader workers' batches)", round(shutil.disk_usage("/dev/shm").total / 2**30, 1)
             if Path("/dev/shm").is_dir() else "none"),
            ("python", platform.python_version())]
    for key, value in rows:
        ctx.rec.row(key=key, value=value)


# ---------------------------------------------------------------------------------------------------
# precision: pytest -m cuda and main.py --train per precision path, all at once

PRECISION_PATHS = {"fp32": [], "bf16 --amp": ["--amp", "--amp_dtype", "bf16"],
                   "fp16 --amp (GradScaler)": ["--amp", "--amp_dtype", "fp16"],
                   "--channels_last": ["--channels_last"], "--compile": ["--compile"]}


def digits_root(ctx: Ctx) -> Path:
    """``--digits``; the bundled digits are built when the default path is missing."""
    path = ctx.args.digits
    if not (path / "train").is_dir():
        if path.resolve() != (ROOT / "data" / "digits").resolve():
            raise FileNotFoundError(f"--digits {path} has no train/ folder; point it at a class-folder dataset "
                                    f"(e.g. data/digits, made by utils/make_digits.py)")
        subprocess.run([sys.executable, str(ROOT / "utils" / "make_digits.py"), "--out", str(path)], check=True)
    return path


def digits_train_args(ctx: Ctx, out: Path, tag: str, epochs: int) -> list[str]:
    """``main.py --train`` flags: the quickstart recipe (decoded once, cached on the device) without its
    channels-last, at the profile's model, size and batch."""
    import yaml
    recipe = yaml.safe_load(RECIPE.read_text())
    recipe.pop("channels_last", None)
    path = out / "digits_recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    p = ctx.prof
    return ["--train", "--config", str(path), "--data", str(digits_root(ctx)), "--arch", p.digits_arch,
            "--image_size", str(p.digits_size), str(p.digits_size), "-b", str(p.digits_batch), "--epochs",
            str(epochs), *(["--warmup", "0"] if epochs < 2 else []), "-j", str(min(2, ctx.workers())),
            "--output", str(out), "--tag", tag, "--no_progress"]


def run_summary(out: Path, arch: str, tag: str) -> dict[str, Any]:
    metrics = json.loads((out / arch / tag / "metrics.json").read_text())
    return {"test_top1": metrics["test"]["test_top1"], "best_val_top1": metrics["test"]["best_val_top1"],
            "train_img_s": finite(metrics["history"][-1]["img_per_s"])}


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


def last_error(output: str) -> str:
    """The line of a process's output that says what went wrong: main.py's one-line error when there is
    one (torchrun's own traceback follows it), else the last line naming an error, else the last line."""
    lines = [line.strip() for line in output.strip().splitlines() if line.strip()]
    for marks in (("ERROR main:", "main.py: error:"), ("Error", "ERROR")):
        found = [line for line in lines if any(m in line for m in marks)]
        if found:
            return found[-1][-400:]
    return (lines or ["(no output)"])[-1][-400:]


# ---------------------------------------------------------------------------------------------------
# resnet50: our loop vs a plain loop vs timm's model, on the same synthetic uint8 batches


def synthetic_loader(ctx: Ctx, n: int, size: int, batch: int, classes: int):
    """Our decoded-cache loader (``CachedLoader``) over ``n`` random uint8 images held on the device."""
    import torch
    from dataloader.cache import CachedLoader
    from dataloader.loader import SeededSampler
    g = torch.Generator().manual_seed(0)
    cache = argparse.Namespace(images=torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=g)
                               .to(ctx.device), valid=torch.ones(n, dtype=torch.bool),
                               targets=torch.randint(0, classes, (n,), generator=g), dataset=None)
    return CachedLoader(cache, SeededSampler(n, shuffle=True, seed=0), batch, drop_last=True)


def our_training(ctx: Ctx, model, loader, epochs: int, dtype) -> float:
    """img/s of ``train_one_epoch`` over ``epochs`` epochs after a warm-up one (wall clock, device synced)."""
    import torch
    from engine import train_one_epoch
    from criterions import create_criterion
    from dataloader import BatchPreprocessor
    preprocess = BatchPreprocessor(MEAN, STD, ctx.device, channels_last=True)
    criterion, optimizer = create_criterion("softmax"), torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    seen = 0
    for epoch in range(epochs + 1):
        if epoch == 1:
            ctx.sync()
            start = time.perf_counter()
        loader.sampler.set_epoch(epoch)
        result = train_one_epoch(model, loader, criterion, optimizer, preprocess=preprocess, dtype=dtype,
                                 epoch=epoch, progress=False)
        seen += round(result["img_per_s"] * result["time"]) if epoch else 0  # the images it trained on
    ctx.sync()
    return finite(seen / (time.perf_counter() - start))


def our_inference(ctx: Ctx, model, loader, epochs: int, dtype) -> float:
    """img/s of ``evaluate`` over ``epochs`` passes after a warm-up one (wall clock, device synced)."""
    from engine import evaluate
    from dataloader import BatchPreprocessor
    preprocess = BatchPreprocessor(MEAN, STD, ctx.device, channels_last=True)
    for epoch in range(epochs + 1):
        if epoch == 1:
            ctx.sync()
            start = time.perf_counter()
        evaluate(model, loader, preprocess=preprocess, dtype=dtype)
    ctx.sync()
    return finite(epochs * len(loader) * loader.batch_size / (time.perf_counter() - start))


def plain_rate(ctx: Ctx, model, batches, epochs: int, dtype, train: bool) -> float:
    """The loop a user writes from the tutorials: normalise, autocast, forward (cross-entropy, backward,
    SGD step); img/s over ``epochs`` passes after a warm-up pass."""
    import torch
    mean = torch.tensor(MEAN, device=ctx.device).view(1, 3, 1, 1) * 255
    std = torch.tensor(STD, device=ctx.device).view(1, 3, 1, 1) * 255
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    model.train(train)

    def one_pass() -> None:
        for images, target in batches:
            x = ((images.float() - mean) / std).contiguous(memory_format=torch.channels_last)
            if not train:
                with torch.inference_mode(), torch.autocast(ctx.device.type, dtype=dtype):
                    model(x)
                continue
            with torch.autocast(ctx.device.type, dtype=dtype):
                loss = torch.nn.functional.cross_entropy(model(x), target)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

    one_pass()
    ctx.sync()
    start = time.perf_counter()
    for _ in range(epochs):
        one_pass()
    ctx.sync()
    return finite(epochs * sum(len(t) for _, t in batches) / (time.perf_counter() - start))


def section_resnet50(ctx: Ctx) -> None:
    import timm
    import torch
    from models import create_model
    p, dev = ctx.prof, ctx.device
    dtype = torch.bfloat16
    loader = synthetic_loader(ctx, p.r50_batch * p.r50_batches, p.r50_size, p.r50_batch, 1000)
    cache = loader.cache
    batches = [(cache.images[i:i + p.r50_batch], cache.targets[i:i + p.r50_batch].to(dev))
               for i in range(0, len(cache.targets), p.r50_batch)]
    ours_model = lambda: create_model(p.bench_arch, 1000)  # noqa: E731  (torchvision's, via our registry)
    timm_model = lambda: timm.create_model(p.bench_arch, num_classes=1000)  # noqa: E731
    sides = [("train", "ours: train_one_epoch + cached loader", ours_model,
              lambda m: our_training(ctx, m, loader, p.r50_epochs, dtype)),
             ("train", "plain loop", ours_model, lambda m: plain_rate(ctx, m, batches, p.r50_epochs, dtype, True)),
             ("train", "plain loop, timm's model (peer)", timm_model,
              lambda m: plain_rate(ctx, m, batches, p.r50_epochs, dtype, True)),
             ("train", "plain loop, cudnn.benchmark on", ours_model,
              lambda m: plain_rate(ctx, m, batches, p.r50_epochs, dtype, True) if ctx.cuda else NO_CUDA),
             ("inference", "ours: evaluate + cached loader", ours_model,
              lambda m: our_inference(ctx, m, loader, p.r50_epochs, dtype)),
             ("inference", "plain loop", ours_model, lambda m: plain_rate(ctx, m, batches, p.r50_epochs, dtype, False)),
             ("inference", "plain loop, timm's model (peer)", timm_model,
              lambda m: plain_rate(ctx, m, batches, p.r50_epochs, dtype, False))]
    plain: dict[str, float] = {}
    for mode, side, build, measure in sides:
        torch.manual_seed(0)
        torch.backends.cudnn.benchmark = "cudnn.benchmark" in side
        model = build().to(dev).to(memory_format=torch.channels_last)
        if ctx.cuda:
            torch.cuda.reset_peak_memory_stats()
        img_s = measure(model)
        if side == "plain loop":
            plain[mode] = img_s
        ctx.rec.row(mode=mode, side=side, model=f"{'timm' if 'timm' in side else 'torchvision'} {p.bench_arch}",
                    img_s=img_s,
                    vs_plain=img_s / plain[mode] if mode in plain and isinstance(img_s, float) else None,
                    peak_mem_gib=ctx.cuda_only(lambda: round(torch.cuda.max_memory_allocated() / 2**30, 2)),
                    anchor=ANCHOR_SHORT if mode == "train" else "")
        if side.startswith("ours: train") and ctx.cuda:
            ctx.rec.data["clocks_under_load"] = nvidia_smi(CLOCKS)
        del model
        if ctx.cuda:
            torch.cuda.empty_cache()
    torch.backends.cudnn.benchmark = False
    for row in ctx.rec.data["rows"]:  # ours is measured before the plain loop: its ratio is filled in last
        if row["vs_plain"] is None and isinstance(row["img_s"], float):
            row["vs_plain"] = row["img_s"] / plain[row["mode"]]
    ctx.rec.data.setdefault("clocks_under_load", NO_CUDA)
    ctx.rec.note(f"{p.bench_arch}: {p.r50_batch * p.r50_batches} random uint8 images at {p.r50_size}x{p.r50_size} held on "
                 f"{dev}, batch {p.r50_batch}, bf16 autocast, channels-last, SGD; one warm-up epoch then "
                 f"{p.r50_epochs} timed; cudnn.benchmark off (torch's default, as main.py runs) unless the row "
                 f"says so")
    ctx.rec.write()


# ---------------------------------------------------------------------------------------------------
# input path: JPEG decoding on CPU workers vs nvjpeg, the decoded cache on the device


def loader_rate(ctx: Ctx, loader) -> float:
    """img/s of preprocessed batches on the device from one epoch of ``loader`` (after its first batch)."""
    from benchmarks.data_pipeline import rate
    from dataloader import BatchPreprocessor
    preprocess = BatchPreprocessor(MEAN, STD, ctx.device, channels_last=True)
    loader.sampler.set_epoch(0)
    return finite(rate(((preprocess(x), t) for x, t, _ in loader), images=len(loader.dataset), sync=ctx.sync))


def section_input_path(ctx: Ctx) -> None:
    import torch
    from benchmarks.make_photo_set import make_photo_set
    from dataloader import ClassificationDataset, create_loader, create_transform
    from models import create_model
    p, dev, w = ctx.prof, ctx.device, ctx.workers()
    photos = make_photo_set(ctx.args.photos, train_per_class=p.photos_per_class, val_per_class=1,
                            classes=p.photo_classes)
    digits = digits_root(ctx)
    sets = {
        "photos": (ClassificationDataset(photos, "folder", "train", transform=create_transform(
            True, (p.photo_size,) * 2, train_resize="rrc", hflip=0.5)), p.photo_batch, p.photo_arch, p.photo_size),
        "digits": (ClassificationDataset(digits, "folder", "train", transform=create_transform(
            True, (p.digits_size,) * 2, train_resize="rrc", rrc_scale=(0.6, 1.0))), p.digits_batch, p.digits_arch,
            p.digits_size)}
    paths = [("photos", "CPU decode workers", {}, ""),
             ("photos", "--gpu_decode", {"decode_on_device": True},
              "" if ctx.cuda else f"nvjpeg {NO_CUDA}: the same loader decoded on the CPU (libjpeg-turbo)"),
             ("digits", "CPU decode workers", {}, ""),
             ("digits", "--cache_dataset memory", {"cache": "memory"},
              "" if ctx.cuda else f"cache on the GPU {NO_CUDA}: the same cache held on the CPU")]
    base: dict[str, float] = {}
    for name, path, kwargs, skipped in paths:
        dataset, batch, arch, size = sets[name]
        loader = create_loader(dataset, batch_size=batch, workers=w, train=True, seed=0, pin_memory=ctx.cuda,
                               device=dev, **kwargs)
        loader_img_s = loader_rate(ctx, loader)
        torch.manual_seed(0)
        model = create_model(arch, len(dataset.class_names)).to(dev).to(memory_format=torch.channels_last)
        model_img_s = our_training(ctx, model, loader, 1, torch.bfloat16)
        base.setdefault(name, model_img_s)
        ctx.rec.row(data=f"{name}: {len(dataset)} images", path=path, device=str(dev), workers=w,
                    loader_img_s=loader_img_s, model=f"{arch} {size}x{size} b{batch}", into_model_img_s=model_img_s,
                    vs_cpu_workers=model_img_s / base[name], **({"skipped": skipped} if skipped else {}))
        del loader, model
    ctx.rec.note(f"loader img/s: normalised batches on {dev} from one epoch (after its first batch); into "
                 f"the model: train_one_epoch with bf16 autocast and channels-last, one warm-up epoch then one "
                 f"timed; photos {p.photo_size}x{p.photo_size} RandomResizedCrop + flip, digits the quickstart "
                 f"recipe's crop; {w} worker process(es)")


# ---------------------------------------------------------------------------------------------------
# ddp: torchrun --nproc_per_node=1 with NCCL (Gloo on the CPU) and --sync_bn


def section_ddp(ctx: Ctx) -> None:
    with tempfile.TemporaryDirectory(prefix="gpu_check_ddp_") as tmp:
        out = Path(tmp)
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1", "main.py",
               *digits_train_args(ctx, out, "ddp", 1), *(["--sync_bn"] if ctx.cuda else [])]
        start = time.time()
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=ctx.left(),
                              env={**os.environ, "OMP_NUM_THREADS": str(ctx.workers())})
        seconds = time.time() - start
        if proc.returncode != 0:
            raise RuntimeError(f"torchrun exited {proc.returncode}: {last_error(proc.stderr)}")
        group = re.search(r"started the (\w+) process group: rank 0 of (\d+)", proc.stderr)
        log = (out / ctx.prof.digits_arch / "ddp" / "log.txt").read_text()
        expected = "nccl" if ctx.cuda else "gloo"
        summary = run_summary(out, ctx.prof.digits_arch, "ddp")
        sync_bn = "converted to SyncBatchNorm" in log
        ctx.rec.row(run="torchrun --nproc_per_node=1, 1 epoch", backend=group.group(1) if group else "none",
                    processes=int(group.group(2)) if group else 0, ddp="(1 processes)" in log,
                    sync_bn=sync_bn if ctx.cuda else f"{NO_CUDA} (torch's SyncBatchNorm runs on GPUs only)",
                    **summary, seconds=round(seconds, 1))
        ctx.rec.note("with one process SyncBatchNorm has no peer and computes plain batch statistics; the "
                     "conversion, DDP and the process group's collectives run")
        if not group or group.group(1) != expected or "(1 processes)" not in log or sync_bn != ctx.cuda:
            raise RuntimeError(f"expected a {expected} process group running DDP{' with SyncBatchNorm' * ctx.cuda};"
                               f" the run said: group {group.group(0) if group else 'none'}, DDP "
                               f"{'(1 processes)' in log}, SyncBatchNorm {sync_bn}")


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
    for name, text in (("gpu_check.json", json.dumps(report, indent=2, default=str)), ("gpu_check.md", markdown(report))):
        tmp = out / f".{name}.tmp"
        tmp.write_text(text)
        tmp.replace(out / name)


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
    p.add_argument("--band", type=float, default=3.0, help="precision paths: test top-1 within this many points of fp32")
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
