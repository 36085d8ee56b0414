"""ECE before and after ``main.py --calibrate`` on held-out data (the test split), over seeds, on the digits.

Each seed trains the quickstart recipe (z_task_shell/configs/digits_resnet18.yaml) for a few epochs, fits the
temperature of its best.pth on the val split (``--calibrate``), then evaluates both checkpoints on the test
split, which the fit never saw. Prints a markdown table: the temperature, test top-1 (the same for both: a
temperature never changes the predicted class), ECE (15 bins, percent), NLL and Brier before and after.

    python benchmarks/calibration.py [--epochs 5] [--seeds 0 1 2] [--data DIR] [main.py flags]
    python benchmarks/calibration.py --quick     # 1 epoch of one seed, to check the script works
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

RECIPE = ROOT / "z_task_shell/configs/digits_resnet18.yaml"


def main_json(argv: list[str]) -> dict:
    """``main.py argv`` in this process; the summary it prints."""
    import main
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main.main(argv)
    if code != 0:
        raise SystemExit(f"main.py {' '.join(argv[:3])} ... exited {code}")
    return json.loads(out.getvalue())


def run_seed(seed: int, epochs: int, out: Path, data: Path, extra: list[str]) -> dict:
    """Train, calibrate on val, evaluate both checkpoints on test: the row of one seed."""
    start = time.perf_counter()
    tag = f"seed{seed}"
    main_json(["--train", "--config", str(RECIPE), "--data", str(data), "--output", str(out), "--tag", tag,
               "--epochs", str(epochs), "--seed", str(seed), "--no_progress",
               *(["--warmup", "0"] if epochs <= 2 else []), *extra])
    best = out / "resnet18" / tag / "checkpoints" / "best.pth"
    fit = main_json(["--calibrate", "--resume", str(best), "--data", str(data), "--no_progress"])
    evaluate = ["--evaluation", "--data", str(data), "--eval_split", "test", "--no_progress"]
    before = main_json([*evaluate, "--resume", str(best)])
    after = main_json([*evaluate, "--resume", fit["checkpoint"]])
    return {"seed": seed, "temperature": fit["temperature"], "top1": before["top1"], "top1_after": after["top1"],
            "before": before, "after": after, "minutes": (time.perf_counter() - start) / 60}


def table(rows: list[dict]) -> str:
    """The markdown table of the seeds' rows."""
    lines = ["| seed | T | test top-1 | ECE % before | ECE % after | NLL before | NLL after | Brier before | "
             "Brier after | minutes |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        b, a = r["before"], r["after"]
        lines.append(f"| {r['seed']} | {r['temperature']:.3f} | {r['top1']:.2f} | {100 * b['ece']:.2f} | "
                     f"{100 * a['ece']:.2f} | {b['nll']:.4f} | {a['nll']:.4f} | {b['brier']:.4f} | {a['brier']:.4f} | "
                     f"{r['minutes']:.1f} |")
    lower = sum(r["after"]["ece"] < r["before"]["ece"] for r in rows)
    lines.append(f"\nECE lower after --calibrate on the test split in {lower} of {len(rows)} seeds")
    return "\n".join(lines)


def main_cli(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--quick", action="store_true", help="1 epoch of seed 0, to check the script works")
    parser.add_argument("--data", type=Path, default=ROOT / "data/digits", help="class folders with train/val/test")
    parser.add_argument("--output", type=Path, default=None, help="where the runs go (default: a temporary folder)")
    args, extra = parser.parse_known_args(argv)
    if args.data == ROOT / "data/digits":
        from dataloader.digits import make_digits
        make_digits(args.data)
    seeds, epochs = ([0], 1) if args.quick else (args.seeds, args.epochs)
    with tempfile.TemporaryDirectory() as tmp:
        rows = [run_seed(seed, epochs, args.output or Path(tmp), args.data, extra) for seed in seeds]
    assert all(r["top1"] == r["top1_after"] for r in rows), "a temperature changed a predicted class"
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main_cli())
