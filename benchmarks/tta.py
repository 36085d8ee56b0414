"""Test top-1 and NLL of the plain best.pth against ``--tta hflip`` (and the other TTA modes asked for), over
seeds, on the bundled digits (issue #30, "Numbers").

Each seed trains the digits recipe (z_task_shell/configs/digits_resnet18.yaml, ``--epochs`` of it), then runs
``main.py --evaluation`` on the test split once plain and once per TTA mode, each writing every image's
probabilities (``--out``), from which the NLL is computed. Prints a markdown table. The digits are not
mirror-symmetric (the recipe trains without flips), so hflip may well cost accuracy here: that is a result.

    python benchmarks/tta.py [--seeds 0 1 2] [--epochs 30] [--modes hflip ...] [--quick] [main.py flags]
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

RECIPE = ROOT / "z_task_shell/configs/digits_resnet18.yaml"


def _main(argv: list[str]) -> None:
    import main
    with contextlib.redirect_stdout(io.StringIO()):
        code = main.main(argv)
    if code != 0:
        raise SystemExit(f"main.py {' '.join(argv)} exited {code}")


def scores(predictions: Path) -> tuple[float, float]:
    """Top-1 (percent) and NLL (mean -log p of the true class) of an ``--evaluation --out`` file."""
    rows = json.loads(predictions.read_text())
    top1 = 100.0 * sum(r["prediction"] == r["label"] for r in rows) / len(rows)
    nll = sum(-math.log(max(r["scores"][r["label"]], 1e-12)) for r in rows) / len(rows)
    return top1, nll


def run_seed(seed: int, epochs: int, modes: list[list[str]], out: Path, data: Path, extra: list[str]) -> dict:
    """Train one seed, evaluate its best.pth plain and under each TTA mode: {mode: (top-1, NLL)}."""
    tag = f"tta_seed{seed}"
    _main(["--train", "--config", str(RECIPE), "--data", str(data), "--output", str(out), "--tag", tag,
           "--epochs", str(epochs), "--seed", str(seed), "--no_progress",
           *(["--warmup", "0"] if epochs <= 2 else []), *extra])
    best = out / "resnet18" / tag / "checkpoints" / "best.pth"
    result = {}
    for mode in [[], *modes]:
        name = " ".join(mode) or "plain"
        predictions = out / f"{tag}_{name.replace(' ', '_')}.json"
        _main(["--evaluation", "--resume", str(best), "--data", str(data), "--eval_split", "test", "--no_progress",
               "--out", str(predictions), *(["--tta", *mode] if mode else [])])
        result[name] = scores(predictions)
    return result


def main_cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--modes", nargs="+", default=["hflip"],
                        help="TTA modes besides plain (hflip, five_crop, ten_crop; 'scales:0.9,1,1.1')")
    parser.add_argument("--quick", action="store_true", help="1 epoch, seed 0: that the script works")
    parser.add_argument("--output", default=None, help="where the runs go (default: a temporary folder)")
    parser.add_argument("--data", type=Path, default=ROOT / "data/digits")
    args, extra = parser.parse_known_args()
    modes = [m.replace(":", " ").replace(",", " ").split() for m in args.modes]
    if args.data == ROOT / "data/digits":
        from dataloader.digits import make_digits
        make_digits(args.data)
    seeds, epochs = ([0], 1) if args.quick else (args.seeds, args.epochs)
    with tempfile.TemporaryDirectory() as tmp:
        results = {s: run_seed(s, epochs, modes, Path(args.output or tmp), args.data, extra) for s in seeds}
    names = list(results[seeds[0]])
    print(f"\n{epochs} epochs of {RECIPE.name}; test split of {args.data}")
    print("| seed | " + " | ".join(f"{n} top-1 | {n} NLL" for n in names) + " |")
    print("|---|" + "---|---|" * len(names))
    for seed, row in results.items():
        print(f"| {seed} | " + " | ".join(f"{row[n][0]:.2f} | {row[n][1]:.4f}" for n in names) + " |")


if __name__ == "__main__":
    main_cli()
