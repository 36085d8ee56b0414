"""ONNX Runtime int8 settings side by side on a model that is hard to quantize, next to NNCF/OpenVINO.

A resnet18 trained ONE epoch at a high learning rate (``--epochs 1 --warmup 0 --lr 0.1``, 32x32, batch 32) on
the bundled digits has rough batch-norm statistics: a few images get logits in the hundreds, most a few
units. For each seed this script trains that model with main.py, exports the verified fp32 ONNX file and the
NNCF int8 IR (``--openvino --quantize int8``) with main.py, then quantizes the fp32 file with each ONNX
Runtime variant below (``export.quantize.write_qdq``), calibrated on the same 256 training images as
``--quantize int8``, and measures every file on the test split as the accuracy guard does: top-1 drop from
fp32 (points, lower is better) and the share of images whose prediction equals fp32's.

    python benchmarks/int8_onnx_variants.py                         # seeds 0 1 2, ~4 minutes a seed on 2 cores
    ONEDNN_MAX_CPU_ISA=AVX2 python benchmarks/int8_onnx_variants.py # other convolution kernels for training
    python benchmarks/int8_onnx_variants.py --seeds 0 --variants project "logits int8 (before)"

The second table says why the old setting failed: one int8 scale for the logits of every image, set by
the largest, against the typical image's gap between its top two logits.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

logger = logging.getLogger("int8_onnx_variants")

# The hard model's recipe: one epoch, no warm-up, a high learning rate (the test in
# tests/e2e/test_quantize.py trains the same).
RECIPE = ("--arch", "resnet18", "--image_size", "32", "32", "-j", "0", "--epochs", "1", "--warmup", "0")
LR, BATCH = 0.1, 32

# name -> (calibration method, keep the outputs float, quantize_static options). "project" is what
# --onnx --quantize int8 writes; "logits int8 (before)" is what it wrote before (ONNX Runtime's defaults
# around the project's settings). The others each change one thing.
VARIANTS: dict[str, tuple[str, bool, dict[str, Any]]] = {
    "project": ("minmax", True, {}),
    "project, percentile": ("percentile", True, {}),
    "project, entropy": ("entropy", True, {}),
    "project, Add not quantized": ("minmax", True, {"exclude_op_types": ["Add"]}),
    "project, only Conv+Gemm quantized": ("minmax", True, {"op_types_to_quantize": ["Conv", "Gemm"]}),
    "project, full-range weights": ("minmax", True, {"reduce_range": False}),
    "project, U8S8": ("minmax", True, {"activation_type": "QUInt8"}),
    "logits int8 (before)": ("minmax", False, {}),
    "before, percentile": ("percentile", False, {}),
    "before, entropy": ("entropy", False, {}),
    "before, U8S8": ("minmax", False, {"activation_type": "QUInt8"}),
    "before, reduce_range": ("minmax", False, {"reduce_range": True}),
    "before, weights per tensor": ("minmax", False, {"per_channel": False}),
    "before, ActivationSymmetric": ("minmax", False, {"extra_options": {"ActivationSymmetric": True}}),
    "before, Gemm not quantized": ("minmax", False, {"exclude_op_types": ["Gemm"]}),
    "before, only Conv quantized": ("minmax", False, {"op_types_to_quantize": ["Conv"]}),
}


def main_py(*args: str) -> dict[str, Any]:
    """Run main.py with ``args`` in its own process; its JSON summary."""
    proc = subprocess.run([sys.executable, str(ROOT / "main.py"), *args], capture_output=True, text=True, cwd=ROOT)
    if proc.returncode != 0:
        raise RuntimeError(f"main.py {' '.join(args)} failed: {proc.stderr[-2000:]}")
    return json.loads(proc.stdout[proc.stdout.index("{"):])


def ort_options(options: dict[str, Any], fp32: Path) -> dict[str, Any]:
    """``VARIANTS`` options as ``quantize_static`` takes them (enum names, op types to node names)."""
    import onnx
    from onnxruntime.quantization import QuantType
    options = dict(options)
    if "activation_type" in options:
        options["activation_type"] = getattr(QuantType, options["activation_type"])
    if "exclude_op_types" in options:
        kinds = options.pop("exclude_op_types")
        options["nodes_to_exclude"] = [n.name for n in onnx.load(str(fp32)).graph.node if n.op_type in kinds]
    return options


def logit_spread(logits: np.ndarray) -> dict[str, float]:
    """The logits' range over all images, the int8 step one per-tensor scale gives it, and per image the
    median spread and median gap between the top two logits."""
    low, high = min(float(logits.min()), 0.0), max(float(logits.max()), 0.0)
    step = (high - low) / 255
    top2 = np.sort(logits, axis=1)[:, -2:]
    gap = top2[:, 1] - top2[:, 0]
    return {"logit min": round(low, 1), "logit max": round(high, 1), "int8 step": round(step, 2),
            "median spread per image": round(float(np.median(logits.max(1) - logits.min(1))), 2),
            "median top-2 gap": round(float(np.median(gap)), 2),
            "% images gap < step": round(100.0 * float((gap < step).mean()), 1)}


def measure_seed(data: Path, out: Path, seed: int, variants: list[str], lr: float = LR, batch: int = BATCH
                 ) -> tuple[dict[str, dict], dict[str, float]]:
    """Train, export and quantize one seed; per variant the guard's numbers, and the logits' spread."""
    import torch

    from applications.convert import labelled_batches, sample_images
    from applications.setup.common import restore_for_inference
    from config import parse_command_line
    from export.core import onnx_runner
    from export.guard import compare_accuracy
    from export.quantize import write_qdq

    tag = f"seed{seed}"
    ckpt = out / "resnet18" / tag / "checkpoints" / "best.pth"
    if not ckpt.is_file():  # a kept --out folder: trained already
        summary = main_py("--train", "--data", str(data), *RECIPE, "--lr", str(lr), "-b", str(batch), "--seed",
                          str(seed), "--output", str(out), "--tag", tag, "--no_progress")
        logger.info("seed %d: trained, val top-1 %.2f", seed, summary["best_val_top1"])
    fp32 = Path(main_py("--onnx", "--resume", str(ckpt))["path"])
    nncf = main_py("--openvino", "--quantize", "int8", "--resume", str(ckpt), "--max_accuracy_drop", "100")["int8"]
    cfg, _ = parse_command_line(["--onnx", "--quantize", "int8", "--resume", str(ckpt), "--data", str(data)])
    restored = restore_for_inference(argparse.Namespace(**{**vars(cfg), "device": "cpu"}), torch.device("cpu"))
    calibration = sample_images(cfg, restored, "train", cfg.calib_images).numpy()
    batches = list(labelled_batches(cfg, restored, cfg.eval_split, None))
    reference = onnx_runner(fp32)
    rows = {"NNCF (--openvino --quantize int8)": {"drop": nncf["top1_drop"], "agreement": nncf["agreement"],
                                                  "fp32_top1": nncf["fp32_top1"]}}
    for name in variants:
        method, float_outputs, options = VARIANTS[name]
        path = write_qdq(fp32, fp32.with_name(f"variant{len(rows)}.int8.onnx"), calibration, method, float_outputs,
                         **ort_options(options, fp32))
        report = compare_accuracy({"fp32": reference, "int8": onnx_runner(path)}, batches)
        rows[name] = {"drop": report["fp32_top1"] - report["int8_top1"], "agreement": report["agreement"],
                      "fp32_top1": report["fp32_top1"]}
        logger.info("seed %d, %s: drop %.2f, agreement %.2f", seed, name, rows[name]["drop"], report["agreement"])
    with torch.no_grad():
        logits = torch.cat([reference(images) for images, _ in batches]).numpy()
    return rows, logit_spread(logits)


def report(results: dict[int, tuple[dict[str, dict], dict[str, float]]]) -> str:
    """The variants table (rows: variants; per seed the top-1 drop and agreement; the worst drop) and the
    logits table (rows: seeds)."""
    from utils.table import format_table
    seeds = list(results)
    names = list(next(iter(results.values()))[0])
    headers = ["variant", *[f"seed {s} {what}" for s in seeds for what in ("drop", "agree")], "worst drop"]
    rows = [["fp32 top-1 (%)", *[v for s in seeds for v in (f"{results[s][0][names[-1]]['fp32_top1']:.2f}", "")], ""]]
    for name in names:
        cells = [results[s][0][name] for s in seeds]
        rows.append([name, *[v for c in cells for v in (f"{c['drop']:+.2f}", f"{c['agreement']:.2f}")],
                     f"{max(c['drop'] for c in cells):+.2f}"])
    spread_keys = list(next(iter(results.values()))[1])
    spread = format_table(["seed", *spread_keys], [[s, *results[s][1].values()] for s in seeds])
    isa = os.environ.get("ONEDNN_MAX_CPU_ISA", "default")
    return (f"ONNX Runtime int8 variants on resnet18, 1 epoch, digits 32x32 (ONEDNN_MAX_CPU_ISA={isa}): top-1 drop "
            f"from fp32 in points on the test split (lower is better), agreement with fp32 in %\n\n"
            f"{format_table(headers, rows)}\n\nfp32 logits on the test split (the int8 step of one per-tensor "
            f"scale over these logits; images whose top-2 gap is under it can tie):\n\n{spread}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ROOT / "data" / "digits", help="class folders (train/val/test)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS), metavar="NAME",
                        help=f"the ONNX Runtime variants to measure (default: all: {', '.join(VARIANTS)})")
    parser.add_argument("--lr", type=float, default=LR, help="the training recipe's learning rate")
    parser.add_argument("-b", "--batch_size", type=int, default=BATCH, help="the training recipe's batch size")
    parser.add_argument("--out", type=Path, default=None, help="keep the runs here (default: a temporary folder)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    if not args.data.is_dir():
        from dataloader.digits import make_digits
        make_digits(args.data)
    with tempfile.TemporaryDirectory() as tmp:
        out = (args.out or Path(tmp)).resolve()
        results = {seed: measure_seed(args.data.resolve(), out, seed, args.variants, args.lr,
                                     args.batch_size) for seed in args.seeds}
    print(report(results))


if __name__ == "__main__":
    main()
