"""best.pth against the average of the last K epochs (``main.py --average last:K``) on the bundled digits:
test top-1 and NLL over several seeds, side by side.

Each seed trains the quickstart recipe (z_task_shell/configs/digits_resnet18.yaml) keeping its last K epochs
(``--keep_last K``), then scores best.pth as it is (``--average best.pth --bn_batches 0``: the same evaluation
code, nothing averaged) and the average of the last K epochs with batch-norm statistics recomputed. The NLL is
the plain cross-entropy of the test split (no label smoothing). ``--quick``: 2 epochs, K 2, one seed.

    python benchmarks/averaging.py [--epochs 30] [--last 5] [--seeds 0 1 2] [--quick] [--data DIR] [main.py flags]
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

RECIPE = ROOT / "z_task_shell/configs/digits_resnet18.yaml"


def _main(argv: list[str]) -> dict:
    """main.main(argv) quietly; the summary it prints."""
    import main
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main.main(argv)
    if code != 0:
        raise SystemExit(f"main.py {' '.join(argv[:2])} exited {code}")
    text = out.getvalue()
    return json.loads(text[text.index("{"):])


def run_seed(seed: int, epochs: int, last: int, out: Path, data: Path, extra: list[str]) -> dict:
    """Train one seed keeping the last ``last`` epochs; best.pth's and the average's test top-1 and NLL."""
    tag = f"avg_seed{seed}"
    common = ["--data", str(data), "--output", str(out), "--arch", "resnet18", "--tag", tag, "--no_progress",
              "--eval_split", "test"]
    _main(["--train", "--config", str(RECIPE), "--data", str(data), "--output", str(out), "--tag", tag,
           "--epochs", str(epochs), "--seed", str(seed), "--keep_last", str(last), "--no_progress",
           *(["--warmup", "0"] if epochs <= 2 else []), *extra])
    run = out / "resnet18" / tag
    best = _main(["--average", str(run / "checkpoints/best.pth"), "--bn_batches", "0",
                  "--out", str(run / "best_copy.pth"), *common])["average"]
    averaged = _main(["--average", f"last:{last}", "--out", str(run / f"avg_last{last}.pth"), *common])["average"]
    return {"seed": seed, "best": best, "average": averaged}


def main_cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--last", type=int, default=5, help="K of --average last:K")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--quick", action="store_true", help="2 epochs, K 2, seed 0: to check the script works")
    parser.add_argument("--output", default=None, help="where the runs go (default: a temporary folder)")
    parser.add_argument("--data", type=Path, default=ROOT / "data/digits", help="class-folder data (default: digits)")
    args, extra = parser.parse_known_args()
    if args.data == ROOT / "data/digits":
        from dataloader.digits import make_digits
        make_digits(args.data)
    epochs, last, seeds = (2, 2, [0]) if args.quick else (args.epochs, args.last, args.seeds)
    with tempfile.TemporaryDirectory() as tmp:
        rows = [run_seed(s, epochs, last, Path(args.output or tmp), args.data, extra) for s in seeds]
    print(f"\n| seed | best.pth top-1 | best.pth NLL | last:{last} average top-1 | last:{last} average NLL |")
    print("|---|---|---|---|---|")
    for r in rows:
        b, a = r["best"], r["average"]
        print(f"| {r['seed']} | {b['top1']:.2f} | {b['loss']:.4f} | {a['top1']:.2f} | {a['loss']:.4f} |")


if __name__ == "__main__":
    main_cli()
