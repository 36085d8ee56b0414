"""CPU inference latency: eager PyTorch vs our TorchScript export vs our ONNX export in ONNX Runtime.

For each model (random weights, 1000 classes, 224x224) the script writes the two exports with the
project's own export code (``export/core.py``, exactly what ``main.py --jit`` / ``--onnx`` write) and
loads them the way the deploy demo does (TorchScript with ``optimize_for_inference`` on load; ONNX
Runtime with every graph optimisation). Every path runs with 2 intra-op threads, in blocks of calls
that take turns in alternating order (see ``time_paths``), and the median call is reported. The table
gives milliseconds per batch, the ratio eager/export, and the largest |logit difference| of each export
from eager on the same input.

Random weights are made numerically realistic first: batch-norm statistics are re-estimated on the
benchmark input (one forward pass in training mode), so activations and logits have the scale of a
trained network instead of growing layer after layer. Timings do not depend on it.

    python benchmarks/cpu_inference.py            # the five models, batch 1 and 32 (a few minutes on 2 cores)
    python benchmarks/cpu_inference.py --quick    # resnet18 at 64x64, batch 1 and 4, few calls (checks it works)
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402

MODELS = ["resnet18", "resnet50", "mobilenet_v3_large", "efficientnet_b0", "shufflenet_v2_x1_0"]
TARGET_MODELS, TARGET_SPEEDUP = ("resnet18", "resnet50"), 2.0
THREADS = 2
# batch -> (blocks per path, warm-up calls at the start of each block, timed calls per block)
SCHEDULE = {1: (4, 3, 10), 32: (2, 1, 2)}
QUICK_SCHEDULE = {1: (2, 1, 3), 4: (2, 1, 1)}


def calibrate_batch_norm(model: nn.Module, x: torch.Tensor) -> nn.Module:
    """Set every batch-norm layer's running statistics to those of ``x`` (one pass in training mode)."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average: after one pass, exactly this batch's statistics
    model.train()
    with torch.no_grad():
        model(x)
    for m in norms:
        m.momentum = 0.1
    return model.eval()


def build_paths(name: str, image_size: int, folder: Path) -> tuple[nn.Module, dict[str, Callable]]:
    """The eager model and a ``batch -> logits`` callable for each path."""
    from models import create_model, model_family
    from models.spec import ModelSpec
    from export.core import (choose_opset, export_metadata, export_onnx, onnx_runner, prepare_for_export,
                              save_torchscript, to_torchscript, torchscript_runner)
    torch.manual_seed(0)
    model = create_model(name, 1000)
    calibrate_batch_norm(model, torch.randn(16, 3, image_size, image_size))
    model = prepare_for_export(model, model_family(name))
    example = torch.randn(2, 3, image_size, image_size)
    metadata = export_metadata(ModelSpec(name, [str(i) for i in range(1000)], (image_size, image_size),
                                         mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)))
    start = time.perf_counter()
    module, _ = to_torchscript(model, example)
    save_torchscript(module, folder / f"{name}.pt", metadata)
    export_onnx(model, example, folder / f"{name}.onnx", metadata, choose_opset())
    print(f"  exported {name} in {time.perf_counter() - start:.1f} s", file=sys.stderr, flush=True)

    def eager(x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return model(x)
    return model, {"eager": eager, "torchscript": torchscript_runner(folder / f"{name}.pt"),
                   "onnxruntime": onnx_runner(folder / f"{name}.onnx", threads=THREADS)}


def time_paths(paths: dict[str, Callable], x: torch.Tensor, blocks: int, warmup: int,
               calls: int) -> tuple[dict[str, float], dict[str, torch.Tensor]]:
    """Median milliseconds per call of each path, and each path's output of its first call.

    Each path runs in blocks of ``warmup`` untimed then ``calls`` timed calls, the paths taking turns
    block by block in alternating order. Blocks, not single calls, because the runtimes' worker threads
    keep spinning for a moment after a call: on 2 cores a path called right after another one would be
    slowed by the other's threads (a call-by-call interleave makes eager PyTorch look ~2-3x slower).
    """
    outputs = {name: run(x) for name, run in paths.items()}
    times: dict[str, list[float]] = {k: [] for k in paths}
    for block in range(blocks):
        for name in (list(paths) if block % 2 == 0 else list(reversed(paths))):
            run = paths[name]
            for _ in range(warmup):
                run(x)
            for _ in range(calls):
                t = time.perf_counter()
                run(x)
                times[name].append(time.perf_counter() - t)
    return {k: 1000 * statistics.median(v) for k, v in times.items()}, outputs


def benchmark(models: list[str], image_size: int, schedule: dict[int, tuple[int, int, int]]) -> list[dict]:
    torch.set_num_threads(THREADS)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in models:
            model, paths = build_paths(name, image_size, Path(tmp))
            for batch, (blocks, warmup, calls) in schedule.items():
                x = torch.randn(batch, 3, image_size, image_size, generator=torch.Generator().manual_seed(batch))
                ms, outputs = time_paths(paths, x, blocks, warmup, calls)
                expected = outputs["eager"]
                diff = {k: float((outputs[k] - expected).abs().max()) for k in ("torchscript", "onnxruntime")}
                rows.append({"model": name, "batch": batch, **{f"{k}_ms": v for k, v in ms.items()},
                             **{f"{k}_diff": v for k, v in diff.items()}, "max_logit": float(expected.abs().max())})
                print(f"  {name} batch {batch}: " + ", ".join(f"{k} {v:.1f} ms" for k, v in ms.items()),
                      file=sys.stderr, flush=True)
            del model, paths
    return rows


def report(rows: list[dict], image_size: int, load: tuple[float, float]) -> str:
    from export.core import ATOL
    from utils.table import format_table
    table = format_table(
        ["model", "batch", "eager ms", "TorchScript ms", "ONNX Runtime ms", "eager/TorchScript",
         "eager/ONNX Runtime", "max abs diff TS", "max abs diff ORT", "max abs logit"],
        [[r["model"], r["batch"], f"{r['eager_ms']:.1f}", f"{r['torchscript_ms']:.1f}", f"{r['onnxruntime_ms']:.1f}",
          f"{r['eager_ms'] / r['torchscript_ms']:.2f}x", f"{r['eager_ms'] / r['onnxruntime_ms']:.2f}x",
          f"{r['torchscript_diff']:.1e}", f"{r['onnxruntime_diff']:.1e}", f"{r['max_logit']:.2f}"] for r in rows])
    import onnxruntime
    lines = [f"CPU inference at {image_size}x{image_size}, {THREADS} threads, torch {torch.__version__}, onnxruntime "
             f"{onnxruntime.__version__}, 1-minute load average {load[0]:.1f} at the start, {load[1]:.1f} at the end "
             f"(median ms per batch; ratio > 1 = export faster)", "", table, ""]
    for r in rows:
        if r["model"] in TARGET_MODELS and r["batch"] == 1:
            for path, label in (("torchscript", "TorchScript"), ("onnxruntime", "ONNX Runtime")):
                speedup = r["eager_ms"] / r[f"{path}_ms"]
                same = r[f"{path}_diff"] <= ATOL
                lines.append(f"{r['model']} batch 1, {label}: {speedup:.2f}x eager "
                             f"({'meets' if speedup >= TARGET_SPEEDUP else 'misses'} the {TARGET_SPEEDUP:g}x target), "
                             f"outputs {'the same' if same else 'DIFFERENT'} (max abs diff {r[f'{path}_diff']:.1e}, "
                             f"{'under' if same else 'over'} {ATOL:g})")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="resnet18 at 64x64, batch 1 and 4, a few calls")
    parser.add_argument("--models", nargs="+", default=None, help=f"models (default: {' '.join(MODELS)})")
    parser.add_argument("--image_size", type=int, default=None, help="input side (default 224; 64 with --quick)")
    args = parser.parse_args()
    models = args.models or (["resnet18"] if args.quick else MODELS)
    image_size = args.image_size or (64 if args.quick else 224)
    start, load_at_start = time.perf_counter(), os.getloadavg()[0]
    print(f"exporting and timing {', '.join(models)}", file=sys.stderr)
    rows = benchmark(models, image_size, QUICK_SCHEDULE if args.quick else SCHEDULE)
    print(report(rows, image_size, (load_at_start, os.getloadavg()[0])))
    print(f"\ntotal time {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
