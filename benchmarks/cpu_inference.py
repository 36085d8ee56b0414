"""CPU inference latency and top-1: eager PyTorch vs our exports, fp32 and int8, side by side.

Paths: eager PyTorch; TorchScript and ONNX (ONNX Runtime) fp32; ONNX Runtime int8 (static QDQ); OpenVINO
fp32 and OpenVINO int8 (NNCF). Every file is written with the project's own export code (``export/``,
exactly what ``main.py --jit`` / ``--onnx`` / ``--openvino [--quantize int8]`` write) and loaded the way
the deploy demo does. Every path runs with 2 intra-op threads, in blocks of calls that take turns in
alternating order (see ``time_paths``), and the median call is reported: milliseconds per batch, the
ratio eager/path, the largest |logit difference| of each fp32 export from eager, and the top-1 of every
path on held-out real photos.

The models (no pretrained weights here, and no network) are made into real classifiers of the photo
set (``make_photo_set.py``: 12 classes, one source photo each) cheaply: random convolutional weights,
batch-norm statistics re-estimated on training photos (so activations have a trained network's scale),
and the last linear layer fitted to the training photos' features by ridge regression. Top-1 is then
far above chance and the int8 paths' drop is a real accuracy drop; int8 files are calibrated on
training photos, top-1 is measured on the held-out ones. Timings do not depend on any of it.

    python benchmarks/cpu_inference.py            # the five models, batch 1 and 32 (tens of minutes on 2 cores)
    python benchmarks/cpu_inference.py --models resnet18 resnet50   # the two the 2x target is set for
    python benchmarks/cpu_inference.py --quick    # resnet18 at 64x64, batch 1 and 4, few calls (checks it works)
"""
from __future__ import annotations

import argparse
import logging
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
TARGET_MODELS, TARGET_SPEEDUP, MAX_DROP = ("resnet18", "resnet50"), 2.0, 1.0
THREADS = 2
MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
FP32_EXPORTS = ("torchscript", "onnxruntime", "openvino")
LABELS = {"eager": "eager", "torchscript": "TorchScript", "onnxruntime": "ORT", "ort_int8": "ORT int8",
          "openvino": "OpenVINO", "openvino_int8": "OpenVINO int8"}
# photos per class: training (batch-norm statistics, the fitted head, int8 calibration) and held out (top-1)
PHOTOS = {"train": 16, "val": 20}
QUICK_PHOTOS = {"train": 8, "val": 4}
# batch -> (blocks per path, warm-up calls at the start of each block, timed calls per block)
SCHEDULE = {1: (4, 3, 10), 32: (2, 1, 2)}
QUICK_SCHEDULE = {1: (2, 1, 3), 4: (2, 1, 1)}


def calibrate_batch_norm(model: nn.Module, x: torch.Tensor, batch: int | None = None) -> nn.Module:
    """Set every batch-norm layer's running statistics to those of ``x`` (passes of ``batch`` images in
    training mode, averaged; one pass for ``None``)."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average: after one pass, exactly this batch's statistics
    model.train()
    with torch.no_grad():
        for chunk in x.split(batch or len(x)):
            model(chunk)
    for m in norms:
        m.momentum = 0.1
    return model.eval()


def fit_head(model: nn.Module, x: torch.Tensor, labels: torch.Tensor, ridge: float = 1e-2) -> nn.Module:
    """Fit the model's last linear layer to ``labels`` of ``x`` (ridge regression on one-hot targets)."""
    head = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    features: list[torch.Tensor] = []
    hook = head.register_forward_hook(lambda m, inputs, out: features.append(inputs[0].detach()))
    with torch.no_grad():
        for chunk in x.split(32):
            model(chunk)
    hook.remove()
    f = torch.cat(features).double()
    mean, scale = f.mean(0), f.std(0).clamp_min(1e-6)
    z = torch.cat([(f - mean) / scale, torch.ones(len(f), 1, dtype=f.dtype)], 1)
    target = torch.nn.functional.one_hot(labels, head.out_features).double() * 10.0
    w = torch.linalg.solve(z.T @ z + ridge * len(f) * torch.eye(z.shape[1], dtype=f.dtype), z.T @ target)
    with torch.no_grad():  # undo the standardisation inside the layer's own weight and bias
        head.weight.copy_((w[:-1] / scale[:, None]).T.float())
        head.bias.copy_((w[-1] - (mean / scale) @ w[:-1]).float())
    return model


def load_photos(root: Path, split: str, image_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Every photo of ``split`` through the project's evaluation preprocessing (ImageNet mean/std), and labels."""
    from dataloader import BatchPreprocessor, ClassificationDataset, create_transform
    dataset = ClassificationDataset(root, "folder", split, transform=create_transform(False, (image_size, image_size)))
    items = [dataset[i] for i in range(len(dataset))]
    images = torch.stack([item[0] for item in items])
    labels = torch.tensor([int(item[1]) for item in items])
    return BatchPreprocessor(MEAN, STD, torch.device("cpu"))(images), labels


def build_paths(name: str, image_size: int, folder: Path, train: tuple[torch.Tensor, torch.Tensor],
                classes: int) -> tuple[nn.Module, dict[str, Callable]]:
    """The eager model (fitted to the photos) and a ``batch -> logits`` callable for each path."""
    from export.core import (
        choose_opset,
        export_metadata,
        export_onnx,
        onnx_runner,
        prepare_for_export,
        save_torchscript,
        to_torchscript,
        torchscript_runner,
    )
    from export.openvino import onnx_to_ir, openvino_runner, quantize_ir
    from export.quantize import quantize_onnx
    from models import create_model, model_family
    from models.spec import ModelSpec
    torch.manual_seed(0)
    model = create_model(name, classes)
    calibrate_batch_norm(model, train[0][:64])
    model = prepare_for_export(model, model_family(name))
    fit_head(model, *train)
    example = train[0][:2]
    metadata = export_metadata(ModelSpec(name, [str(i) for i in range(classes)], (image_size, image_size),
                                         mean=MEAN, std=STD))
    start = time.perf_counter()
    module, _ = to_torchscript(model, example)
    save_torchscript(module, folder / f"{name}.pt", metadata)
    export_onnx(model, example, folder / f"{name}.onnx", metadata, choose_opset())
    onnx_to_ir(folder / f"{name}.onnx", folder / f"{name}.xml", metadata)
    calibration = train[0].numpy()
    quantize_onnx(folder / f"{name}.onnx", folder / f"{name}.int8.onnx", calibration, "minmax", metadata)
    quantize_ir(folder / f"{name}.xml", folder / f"{name}.int8.xml", calibration, "minmax", metadata)
    print(f"  exported {name} (fp32 and int8) in {time.perf_counter() - start:.1f} s", file=sys.stderr, flush=True)

    def eager(x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return model(x)
    return model, {"eager": eager, "torchscript": torchscript_runner(folder / f"{name}.pt"),
                   "onnxruntime": onnx_runner(folder / f"{name}.onnx", threads=THREADS),
                   "ort_int8": onnx_runner(folder / f"{name}.int8.onnx", threads=THREADS),
                   "openvino": openvino_runner(folder / f"{name}.xml", threads=THREADS),
                   "openvino_int8": openvino_runner(folder / f"{name}.int8.xml", threads=THREADS)}


def top1(paths: dict[str, Callable], images: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """Top-1 (percent) of each path on ``images``."""
    correct = {k: 0 for k in paths}
    for chunk, target in zip(images.split(32), labels.split(32)):
        for k, run in paths.items():
            correct[k] += int((run(chunk).argmax(1) == target).sum())
    return {k: 100.0 * c / len(labels) for k, c in correct.items()}


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


def benchmark(models: list[str], image_size: int, schedule: dict[int, tuple[int, int, int]],
              photos: dict[str, int]) -> list[dict]:
    from benchmarks.make_photo_set import make_photo_set
    torch.set_num_threads(THREADS)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = make_photo_set(Path(tmp) / "photos", train_per_class=photos["train"], val_per_class=photos["val"])
        train, held_out = load_photos(root, "train", image_size), load_photos(root, "val", image_size)
        classes = int(train[1].max()) + 1
        for name in models:
            model, paths = build_paths(name, image_size, Path(tmp), train, classes)
            accuracy = top1(paths, *held_out)
            print(f"  {name} top-1 on {len(held_out[1])} held-out photos: "
                  + ", ".join(f"{LABELS[k]} {v:.1f}" for k, v in accuracy.items()), file=sys.stderr, flush=True)
            for batch, (blocks, warmup, calls) in schedule.items():
                x = torch.randn(batch, 3, image_size, image_size, generator=torch.Generator().manual_seed(batch))
                ms, outputs = time_paths(paths, x, blocks, warmup, calls)
                expected = outputs["eager"]
                diff = {k: float((outputs[k] - expected).abs().max()) for k in FP32_EXPORTS}
                rows.append({"model": name, "batch": batch, **{f"{k}_ms": v for k, v in ms.items()},
                             **{f"{k}_diff": v for k, v in diff.items()},
                             **{f"{k}_top1": v for k, v in accuracy.items()},
                             "max_logit": float(expected.abs().max()), "photos": len(held_out[1])})
                print(f"  {name} batch {batch}: " + ", ".join(f"{LABELS[k]} {v:.1f} ms" for k, v in ms.items()),
                      file=sys.stderr, flush=True)
            del model, paths
    return rows


def report(rows: list[dict], image_size: int, load: tuple[float, float]) -> str:
    from export.core import RTOL, logit_bound
    from utils.table import format_table
    exports = [k for k in LABELS if k != "eager"]
    table = format_table(
        ["model", "batch", "eager ms", *[f"{LABELS[k]} ms" for k in exports], *[f"eager/{LABELS[k]}" for k in exports],
         *[f"top-1 {LABELS[k]}" for k in LABELS], *[f"max abs diff {LABELS[k]}" for k in FP32_EXPORTS]],
        [[r["model"], r["batch"], f"{r['eager_ms']:.1f}", *[f"{r[f'{k}_ms']:.1f}" for k in exports],
          *[f"{r['eager_ms'] / r[f'{k}_ms']:.2f}x" for k in exports], *[f"{r[f'{k}_top1']:.1f}" for k in LABELS],
          *[f"{r[f'{k}_diff']:.1e}" for k in FP32_EXPORTS]] for r in rows])
    import onnxruntime
    import openvino
    lines = [f"CPU inference at {image_size}x{image_size}, {THREADS} threads, torch {torch.__version__}, onnxruntime "
             f"{onnxruntime.__version__}, OpenVINO {openvino.get_version().split('-')[0]}, 1-minute load average "
             f"{load[0]:.1f} at the start, {load[1]:.1f} at the end (median ms per batch; ratio > 1 = path faster; "
             f"top-1 in % on {rows[0]['photos'] if rows else 0} held-out photos)", "", table, ""]
    for r in rows:
        if r["model"] in TARGET_MODELS and r["batch"] == 1:
            for path in exports:
                speedup = r["eager_ms"] / r[f"{path}_ms"]
                drop = r["eager_top1"] - r[f"{path}_top1"]
                bound = logit_bound(r["max_logit"])  # the bound main.py's exports are verified against
                detail = (f"max abs diff {r[f'{path}_diff']:.1e} ({'under' if r[f'{path}_diff'] <= bound else 'over'} "
                          f"the bound {bound:.1e} = {RTOL:g} x max(1, max abs logit {r['max_logit']:.3g}))"
                          if path in FP32_EXPORTS else f"top-1 drop {drop:+.1f} points")
                meets = speedup >= TARGET_SPEEDUP and drop <= MAX_DROP
                lines.append(f"{r['model']} batch 1, {LABELS[path]}: {speedup:.2f}x eager, {detail}: "
                             f"{'meets' if meets else 'misses'} the {TARGET_SPEEDUP:g}x / {MAX_DROP:g}-point target")
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
    logging.basicConfig(level=logging.WARNING)
    rows = benchmark(models, image_size, QUICK_SCHEDULE if args.quick else SCHEDULE,
                     QUICK_PHOTOS if args.quick else PHOTOS)
    print(report(rows, image_size, (load_at_start, os.getloadavg()[0])))
    print(f"\ntotal time {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
