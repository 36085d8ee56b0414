"""Model comparison: parameters, FLOPs, CPU batch-1 latency and digits accuracy of the registered models.

For each model: parameters and FLOPs with an ImageNet head (1000 classes) at 224x224
(``torch.utils.flop_counter``, 1 multiply-add = 2 FLOPs); the median eager-PyTorch latency of a
batch of one 224x224 image on the CPU (2 threads, ``benchmarks/cpu_inference.py``'s timing); and the
test top-1 on the bundled digits after training from scratch with the quickstart recipe
(``z_task_shell/configs/digits_resnet18.yaml``) at 32x32 rather than the recipe's 48x48 (nine models in
about 25 minutes; ``--image_size 48 48`` among the extra flags trains them at the recipe's size), with
only ``--arch`` and ``--epochs`` changed and gradient-norm clipping at 5 (``ZOO_FLAGS``: without it the
deep models diverged at the recipe's earlier LR 0.1), through ``main.py --train`` itself. Prints a
markdown table.

    python benchmarks/model_zoo.py                 # the nine models, 10 epochs each (about 25 minutes on 2 cores)
    python benchmarks/model_zoo.py --epochs 30 --models resnet18 resnet50
    python benchmarks/model_zoo.py --quick         # mobilenet_v3_small, 1 epoch of a tiny digits subset, 64x64 latency
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

MODELS = ["resnet18", "resnet50", "resnext50_32x4d", "shufflenet_v2_x1_0", "mobilenet_v2", "mobilenet_v3_small",
          "mobilenet_v3_large", "efficientnet-b0", "resnest50"]
RECIPE = ROOT / "z_task_shell" / "configs" / "digits_resnet18.yaml"
ZOO_FLAGS = ["--clip_grad", "5"]  # one recipe for every model: clipping keeps the deep ones from diverging
THREADS = 2


def size_and_latency(name: str, image_size: int, calls: int) -> dict[str, float]:
    """Parameters, FLOPs at 224x224 and the median batch-1 eager latency (ms) at ``image_size`` of ``name``
    with 1000 classes."""
    from applications.model_tools import count_flops, count_parameters
    from benchmarks.cpu_inference import calibrate_batch_norm, time_paths
    from export.core import prepare_for_export
    from models import create_model, model_family
    torch.manual_seed(0)
    model = create_model(name, 1000)
    calibrate_batch_norm(model, torch.randn(8, 3, image_size, image_size))
    model = prepare_for_export(model, model_family(name))  # efficientnet-pytorch: plain swish, like the exports
    flops, _ = count_flops(model, (224, 224))

    def eager(x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return model(x)
    ms, _ = time_paths({"eager": eager}, torch.randn(1, 3, image_size, image_size), blocks=2, warmup=3, calls=calls)
    return {"params": count_parameters(model), "flops": flops, "latency_ms": ms["eager"]}


def digits_accuracy(name: str, data: Path, epochs: int, out: Path, extra: list[str]) -> dict[str, float]:
    """Test top-1, best val top-1 and wall minutes of ``main.py --train`` with the recipe and ``--arch name``."""
    cmd = [sys.executable, str(ROOT / "main.py"), "--train", "--config", str(RECIPE), "--data", str(data),
           "--arch", name, "--epochs", str(epochs), "--output", str(out), "--tag", "zoo", "--no_progress",
           *ZOO_FLAGS, *(["--warmup", "0"] if epochs <= 1 else []), *extra]
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{name}: main.py exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    test = json.loads((out / name.replace("/", "-") / "zoo" / "metrics.json").read_text())["test"]
    return {"test_top1": test["test_top1"], "val_top1": test["best_val_top1"],
            "minutes": (time.perf_counter() - start) / 60}


def report(rows: list[dict], image_size: int, epochs: int) -> str:
    from utils.table import format_table
    table = format_table(
        ["model", "params (M)", "GFLOPs at 224", f"CPU batch-1 ms at {image_size}",
         f"digits test top-1 ({epochs} ep)", "digits best val top-1", "train minutes"],
        [[r["model"], f"{r['params'] / 1e6:.2f}", f"{r['flops'] / 1e9:.2f}", f"{r['latency_ms']:.1f}",
          f"{r['test_top1']:.2f}", f"{r['val_top1']:.2f}", f"{r['minutes']:.1f}"] for r in rows])
    return (f"torch {torch.__version__}, {THREADS} threads; params and FLOPs with a 1000-class head; digits: "
            f"{RECIPE.relative_to(ROOT)} with --arch, --epochs {epochs} and {' '.join(ZOO_FLAGS)}\n\n{table}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=None, help=f"default: {' '.join(MODELS)}")
    p.add_argument("--epochs", type=int, default=10, help="digits training epochs per model")
    p.add_argument("--data", type=Path, default=ROOT / "data" / "digits")
    p.add_argument("--quick", action="store_true", help="a smoke run (checks that the script works)")
    args, extra = p.parse_known_args(argv)
    torch.set_num_threads(THREADS)
    models = args.models or (["mobilenet_v3_small"] if args.quick else MODELS)
    image_size, calls = (64, 3) if args.quick else (224, 10)
    epochs = 1 if args.quick else args.epochs
    start = time.perf_counter()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        data = args.data
        if args.quick:  # 4 digits per class and split, 16x16
            data = Path(tmp) / "digits"
            subprocess.run([sys.executable, str(ROOT / "utils" / "make_digits.py"), "--out", str(data),
                            "--per_class", "4"], check=True, capture_output=True)
            extra = ["--image_size", "16", "16", "-b", "8", "-j", "0", *extra]
        else:
            extra = ["--image_size", "32", "32", *extra]  # flags given later win
            if not (data / "train").is_dir():
                subprocess.run([sys.executable, str(ROOT / "utils" / "make_digits.py"), "--out", str(data)], check=True)
        for name in models:
            print(f"  {name} ...", file=sys.stderr, flush=True)
            rows.append({"model": name, **size_and_latency(name, image_size, calls),
                         **digits_accuracy(name, data, epochs, Path(tmp) / "runs", extra)})
    print(report(rows, image_size, epochs))
    print(f"\ntotal time {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
