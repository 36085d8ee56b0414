"""Test top-1 on the bundled digits for every loss option (and the augmentation recipes), one run each.

The options are the variants of the strategies sweep (z_task_shell/configs/strategies.yaml), which
`main.py --sweep` runs as separate processes (z_task_shell/2_train_with_strategies.sh); this script
runs them in one process and prints its own table.

Every run uses the quickstart recipe (z_task_shell/configs/digits_resnet18.yaml) with one strategy
changed, so the table compares like with like. Prints a markdown table; `--quick` runs 1 epoch of two
options. Other data with `--data`; any other flags go to every run's main.py after the option's own.

    python benchmarks/loss_options.py [--epochs 30] [--only NAME ...] [--quick] [--data DIR] [main.py flags]
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

SWEEP = ROOT / "z_task_shell/configs/strategies.yaml"


def sweep_options(path: Path = SWEEP) -> dict[str, list[str]]:
    """The variants of the strategies sweep file, each as the main.py flags it adds to the recipe."""
    from config import build_parser, flags_to_argv
    from experiments.sweep_plan import load_sweep
    return {v.tag: flags_to_argv(build_parser(), v.values) for v in load_sweep(path).variants}


OPTIONS: dict[str, list[str]] = sweep_options()


def run_option(name: str, flags: list[str], epochs: int, out: Path, data: Path = ROOT / "data/digits",
               extra: list[str] = ()) -> dict:
    """Train the recipe with ``flags`` (then ``extra``) added; its test and best val top-1 and minutes."""
    import main
    tag = "".join(c if c.isalnum() else "_" for c in name)
    argv = ["--train", "--config", str(ROOT / "z_task_shell/configs/digits_resnet18.yaml"), "--data",
            str(data), "--output", str(out), "--tag", tag, "--epochs", str(epochs),
            "--no_progress", *(["--warmup", "0"] if epochs <= 1 else []), *flags, *extra]
    start = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        code = main.main(argv)
    if code != 0:
        raise SystemExit(f"{name}: main.py exited {code}")
    summary = json.loads((out / "resnet18" / tag / "metrics.json").read_text())["test"]
    return {"name": name, "flags": " ".join(flags) or "(none)", "test_top1": summary["test_top1"],
            "val_top1": summary["best_val_top1"], "minutes": (time.perf_counter() - start) / 60}


def main_cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--only", nargs="+", default=None, help="option names to run (default: all)")
    parser.add_argument("--quick", action="store_true", help="1 epoch of two options, to check the script works")
    parser.add_argument("--output", default=None, help="where the runs go (default: a temporary folder)")
    parser.add_argument("--data", type=Path, default=ROOT / "data/digits",
                        help="class-folder data (default: the digits)")
    args, extra = parser.parse_known_args()
    unknown = [n for n in args.only or () if n not in OPTIONS]
    if unknown:
        parser.error(f"--only: unknown option(s) {unknown}; choose from {list(OPTIONS)}")
    if args.data == ROOT / "data/digits":
        from dataloader.digits import make_digits
        make_digits(args.data)
    names = ["baseline", "bce_ghm"] if args.quick else (args.only or list(OPTIONS))
    epochs = 1 if args.quick else args.epochs
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(args.output or tmp)
        rows = [run_option(n, OPTIONS[n], epochs, out, args.data, extra) for n in names]
    print("\n| loss / strategy | flags added to the recipe | test top-1 | best val top-1 | minutes |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['name']} | `{r['flags']}` | {r['test_top1']:.2f} | {r['val_top1']:.2f} | {r['minutes']:.1f} |")


if __name__ == "__main__":
    main_cli()
