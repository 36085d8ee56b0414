"""How far a correct fp32 export is from the eager model, family by family, against the bound it is held
to (``export.core.logit_bound``), and how far wrong exports are.

For each model the script builds it with the project's factory (10 classes, no pretrained weights, no
network), gives it a trained network's activation scale (batch-norm statistics of real digits images in
training mode, then the last linear layer fitted to them, as ``cpu_inference.py`` does), and exports it
through the project's own functions (``prepare_for_export``, ``export_onnx``, ``to_torchscript`` +
``save_torchscript``, ``onnx_to_ir``; run through ``onnx_runner``, ``torchscript_runner``,
``openvino_runner``), as ``main.py --onnx`` / ``--jit`` / ``--openvino`` do. Each export is checked by
``verify_export`` on 8 real images (batched and the first alone), as the export modes do. Two wrong
exports show the margin: the same model with 1% multiplicative noise on the weight of its first
convolution (the stem, on every family's main path: a block's convolution in a random-init ConvNeXt is
scaled by its layer scale of 1e-6, and a plain 1.01 scale would vanish in the stem's LayerNorm), and the
right ONNX file fed images without the mean/std normalisation.

Columns: max |logit| of eager; eager's own distance from float64 logits; each export's max |logit
difference| from eager; the bound's two terms (``logit_bound``: the larger applies, the second only once the
first is exceeded); whether every export passed ``verify_export``; the wrong exports' differences and their
ratio to the bound.

    OMP_NUM_THREADS=1 python benchmarks/onnx_families.py                      # every family, 224x224
    OMP_NUM_THREADS=1 ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2 python benchmarks/onnx_families.py
    python benchmarks/onnx_families.py --models resnet18 --image_size 64      # a quick check
"""
from __future__ import annotations

import argparse
import copy
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
from cpu_inference import calibrate_batch_norm, fit_head  # noqa: E402

MODELS = ["resnet18", "resnet50", "resnext50_32x4d", "shufflenet_v2_x1_0", "mobilenet_v2", "mobilenet_v3_small",
          "mobilenet_v3_large", "densenet121", "efficientnet_b0", "convnext_tiny", "efficientnet-b0", "resnest50",
          "timm/resnet18", "timm/convnext_atto"]
CLASSES = 10
MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
CALIBRATION_IMAGES = 32  # per class-spread sample of the training split: batch-norm statistics and the head
CALIBRATION_BATCH = 16  # images per training-mode pass (a few passes, cumulative average)
WEIGHT_NOISE = 0.01


def load_images(root: Path, split: str, image_size: int, count: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``count`` images spread over ``split`` through evaluation's geometry: normalised as evaluation does,
    the same scaled to [0, 1] without mean/std (a missing normalisation), and their labels."""
    from dataloader import BatchPreprocessor, ClassificationDataset, create_transform
    dataset = ClassificationDataset(root, "folder", split, transform=create_transform(False, (image_size, image_size)))
    picks = torch.linspace(0, len(dataset) - 1, count).round().long().tolist()
    items = [dataset[i] for i in picks]
    raw = torch.stack([item[0] for item in items])
    labels = torch.tensor([int(item[1]) for item in items])
    return BatchPreprocessor(MEAN, STD, torch.device("cpu"))(raw), raw.float() / 255.0, labels


def first_conv(model: nn.Module) -> tuple[str, nn.Module]:
    return next((name, m) for name, m in model.named_modules() if isinstance(m, nn.Conv2d))


def with_noisy_weight(model: nn.Module) -> tuple[nn.Module, str]:
    """A copy of ``model`` whose first convolution's weight carries ``WEIGHT_NOISE`` multiplicative noise."""
    wrong = copy.deepcopy(model)
    name, conv = first_conv(wrong)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        conv.weight.mul_(1 + WEIGHT_NOISE * torch.randn(conv.weight.shape, generator=generator))
    return wrong, name


def measure(name: str, image_size: int, data: Path, folder: Path) -> dict:
    from applications.convert import VERIFY_IMAGES
    from export.core import (
        ExportError,
        choose_opset,
        export_metadata,
        export_onnx,
        float64_logits,
        logit_bound,
        onnx_runner,
        prepare_for_export,
        save_torchscript,
        to_torchscript,
        torchscript_runner,
        verify_export,
    )
    from export.openvino import onnx_to_ir, openvino_runner
    from models import create_model, model_family
    from models.spec import ModelSpec
    calibration, _, calibration_labels = load_images(data, "train", image_size, CALIBRATION_IMAGES)
    images, raw, _ = load_images(data, "test", image_size, VERIFY_IMAGES)
    torch.manual_seed(0)
    model = create_model(name, CLASSES)
    calibrate_batch_norm(model, calibration, batch=CALIBRATION_BATCH)
    model = prepare_for_export(model, model_family(name))
    fit_head(model, calibration, calibration_labels)
    metadata = export_metadata(ModelSpec(name, [str(i) for i in range(CLASSES)], (image_size, image_size),
                                         mean=MEAN, std=STD))
    stem = name.replace("/", "_")
    opset = choose_opset()
    export_onnx(model, images[:2], folder / f"{stem}.onnx", metadata, opset)
    module, _ = to_torchscript(model, images[:2])
    save_torchscript(module, folder / f"{stem}.pt", metadata)
    onnx_to_ir(folder / f"{stem}.onnx", folder / f"{stem}.xml", metadata)
    runners = {"ORT": onnx_runner(folder / f"{stem}.onnx"),
               "TorchScript": torchscript_runner(folder / f"{stem}.pt", optimize=True),
               "OpenVINO": openvino_runner(folder / f"{stem}.xml")}
    with torch.no_grad():
        eager = model(images)
    exact = float64_logits(model, images)
    max_logit = float(eager.abs().max())
    eager_f64 = float((eager.double() - exact).abs().max()) if exact is not None else None
    # the relative bound, and the largest bound verify_export can set (with the float64 term)
    row = {"model": name, "max_logit": max_logit, "eager_f64": eager_f64 if exact is not None else float("nan"),
           "relative": logit_bound(max_logit), "bound": logit_bound(max_logit, eager_float64_error=eager_f64),
           "failed": []}
    for how, runner in runners.items():
        try:
            row[how] = verify_export(f"{name} {how}", model, runner, images)["max_abs_diff"]
        except ExportError as e:
            row["failed"].append(how)
            row[how] = float(str(e).split("max |logit difference| ")[1].split()[0])
            print(f"  {e}", file=sys.stderr)
    wrong, conv = with_noisy_weight(model)
    export_onnx(wrong, images[:2], folder / f"{stem}.wrong.onnx", metadata, opset)
    row["noisy_weight"] = float((onnx_runner(folder / f"{stem}.wrong.onnx")(images) - eager).abs().max())
    row["noisy_conv"] = conv
    row["unnormalised"] = float((runners["ORT"](raw) - eager).abs().max())
    return row


def fmt(x: float) -> str:
    return f"{x:.1e}"


def report(rows: list[dict], image_size: int) -> str:
    import onnxruntime
    import openvino

    from export.core import FLOAT64_FACTOR, RTOL
    from utils.table import format_table
    table = format_table(
        ["model", "max abs logit", "eager vs float64", "ORT diff", "TorchScript diff", "OpenVINO diff",
         f"{RTOL:g} x max(1, logit)", f"{FLOAT64_FACTOR:g} x eager vs float64", "verified",
         "noisy weight diff (x bound)", "unnormalised diff (x bound)"],
        [[r["model"], f"{r['max_logit']:.1f}", fmt(r["eager_f64"]), fmt(r["ORT"]), fmt(r["TorchScript"]),
          fmt(r["OpenVINO"]), fmt(r["relative"]), fmt(FLOAT64_FACTOR * r["eager_f64"]),
          "fails: " + ", ".join(r["failed"]) if r["failed"] else "all pass",
          f"{fmt(r['noisy_weight'])} ({r['noisy_weight'] / r['bound']:.0f}x)",
          f"{fmt(r['unnormalised'])} ({r['unnormalised'] / r['bound']:.0f}x)"] for r in rows])
    exports = ("ORT", "TorchScript", "OpenVINO")
    worst = max(max(r[k] / r["bound"] for k in exports) for r in rows)
    worst_relative = max(max(r[k] / r["relative"] for k in exports) for r in rows)
    worst_f64 = max(max(r[k] / r["eager_f64"] for k in exports) for r in rows)
    closest = min(min(r["noisy_weight"], r["unnormalised"]) / r["bound"] for r in rows)
    env = {k: os.environ.get(k, "unset") for k in ("ONEDNN_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY", "OMP_NUM_THREADS")}
    return "\n".join([
        f"fp32 exports vs eager at {image_size}x{image_size}, torch {torch.__version__} (CPU capability "
        f"{torch.backends.cpu.get_cpu_capability()}), onnxruntime {onnxruntime.__version__}, OpenVINO "
        f"{openvino.get_version().split('-')[0]}, {' '.join(f'{k}={v}' for k, v in env.items())}; "
        f"bound = the larger of "
        f"{RTOL:g} x max(1, max abs logit) and {FLOAT64_FACTOR:g} x eager vs float64 (export.core.logit_bound)", "",
        table, "",
        f"correct exports: at most {worst:.2g} of the bound ({worst_relative:.2g} of the relative bound alone; "
        f"at most {worst_f64:.2g}x eager's own distance from float64); closest wrong export: {closest:.3g}x the bound"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=MODELS, help=f"models (default: {' '.join(MODELS)})")
    parser.add_argument("--image_size", type=int, default=224)
    parser.add_argument("--data", type=Path, default=ROOT / "data" / "digits", help="a class-folder dataset")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    start, rows = time.perf_counter(), []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            t = time.perf_counter()
            rows.append(measure(name, args.image_size, args.data, Path(tmp)))
            r = rows[-1]
            print(f"  {name}: {time.perf_counter() - t:.0f} s; max |logit| {r['max_logit']:.1f}, diffs ORT "
                  f"{r['ORT']:.1e}, TorchScript {r['TorchScript']:.1e}, OpenVINO {r['OpenVINO']:.1e}, bound "
                  f"{r['relative']:.1e} / {r['bound']:.1e}; eager-f64 {r['eager_f64']:.1e}; wrong "
                  f"{r['noisy_weight']:.1e}, {r['unnormalised']:.1e}", file=sys.stderr, flush=True)
    print(report(rows, args.image_size))
    print(f"\ntotal time {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
