"""Choosing and trusting a model (issue #30): the plain best.pth against ``--tta hflip`` and ``--average last:K``
(test top-1 and NLL), and ECE before and after ``--calibrate``, over seeds, side by side, on the bundled digits
or the photo set.

Each seed trains once (``--keep_last K`` keeps its last K epochs), then on the test split, which neither
training nor the temperature fit saw:

- ``best.pth``: ``main.py --evaluation`` (top-1, NLL = cross-entropy of the probabilities, ECE 15 bins);
- ``--tta hflip``: the same evaluation, the probabilities of the image and its mirror image averaged;
- ``--average last:K``: the last K epochs' weights averaged, batch-norm statistics recomputed over training
  batches, the result evaluated as above;
- ``--calibrate``: one temperature fitted on the val split into ``best_calibrated.pth``, evaluated as above
  (the top-1 is best.pth's: a temperature never changes the predicted class).

Datasets: ``digits`` (the quickstart recipe, z_task_shell/configs/digits_resnet18.yaml: 48x48, no flips, as
digits are not mirror-symmetric, so hflip TTA shows what it costs on such data) and ``photos``
(benchmarks/make_photo_set.py: 12 classes of crops of scikit-image's sample photos, some mirrored; the same
recipe at 64x64 with flips, as a natural-image task). Extra arguments go to every ``main.py --train``.

    python benchmarks/trust.py [--dataset digits|photos] [--seeds 0 1 2] [--epochs N] [--last 5] [main.py flags]
    python benchmarks/trust.py --quick     # 2 epochs of seed 0, to check the script works
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
# dataset -> (default epochs, flags added to the recipe)
DATASETS = {"digits": (30, []),
            "photos": (15, ["--image_size", "64", "64", "--hflip", "0.5", "--rrc_scale", "0.35", "1.0"])}
PHOTOS = {"train_per_class": 60, "val_per_class": 25, "test_per_class": 40}


def main_json(argv: list[str]) -> dict:
    """``main.py argv`` in this process, quietly; the JSON summary it prints."""
    import main
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main.main(argv)
    if code != 0:
        raise SystemExit(f"main.py {' '.join(argv[:3])} ... exited {code}")
    text = out.getvalue()
    return json.loads(text[text.index("{"):])


def prepare(dataset: str, data: Path | None) -> Path:
    """``data`` as it is, else the default folder of ``dataset``, built from the bundled sources if absent."""
    if data is not None:
        return data
    if dataset == "digits":
        from dataloader.digits import make_digits
        return make_digits(ROOT / "data/digits")
    from benchmarks.make_photo_set import make_photo_set
    return make_photo_set(ROOT / "data/photos_trust", **PHOTOS)


def run_seed(seed: int, epochs: int, last: int, out: Path, data: Path, flags: list[str]) -> dict:
    """Train one seed, then evaluate best.pth plain, with hflip TTA, averaged over the last ``last`` epochs and
    calibrated: each one's --evaluation summary on the test split."""
    start = time.perf_counter()
    tag = f"seed{seed}"
    main_json(["--train", "--config", str(RECIPE), "--data", str(data), "--output", str(out), "--tag", tag,
               "--epochs", str(epochs), "--seed", str(seed), "--keep_last", str(last), "--no_progress",
               *(["--warmup", "0"] if epochs <= 2 else []), *flags])
    run = out / "resnet18" / tag
    best = run / "checkpoints" / "best.pth"
    evaluate = ["--evaluation", "--data", str(data), "--eval_split", "test", "--output", str(out), "--no_progress"]
    row = {"seed": seed, "best": main_json([*evaluate, "--resume", str(best)])}
    row["hflip"] = main_json([*evaluate, "--resume", str(best), "--tta", "hflip"])
    averaged = run / f"average_last{last}.pth"
    main_json(["--average", f"last:{last}", "--out", str(averaged), "--data", str(data), "--output", str(out),
               "--arch", "resnet18", "--tag", tag, "--eval_split", "test", "--no_progress"])
    row["average"] = main_json([*evaluate, "--resume", str(averaged)])
    fit = main_json(["--calibrate", "--resume", str(best), "--data", str(data), "--no_progress"])
    row["calibrated"] = main_json([*evaluate, "--resume", fit["checkpoint"]])
    row["temperature"], row["minutes"] = fit["temperature"], (time.perf_counter() - start) / 60
    return row


def table(rows: list[dict], last: int) -> str:
    """The markdown table of the seeds' rows and the summary lines."""
    lines = [f"| seed | best.pth top-1 | NLL | hflip top-1 | NLL | last:{last} top-1 | NLL | ECE % | T | "
             "ECE % calibrated | NLL calibrated | minutes |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        b, h, a, c = r["best"], r["hflip"], r["average"], r["calibrated"]
        lines.append(f"| {r['seed']} | {b['top1']:.2f} | {b['nll']:.4f} | {h['top1']:.2f} | {h['nll']:.4f} | "
                     f"{a['top1']:.2f} | {a['nll']:.4f} | {100 * b['ece']:.2f} | {r['temperature']:.3f} | "
                     f"{100 * c['ece']:.2f} | {c['nll']:.4f} | {r['minutes']:.1f} |")
    n = len(rows)

    def mean(key: str, field: str) -> float:
        return sum(r[key][field] for r in rows) / n

    for key, name in (("hflip", "--tta hflip"), ("average", f"--average last:{last}")):
        lines.append(f"{name} vs best.pth: mean top-1 {mean(key, 'top1') - mean('best', 'top1'):+.2f} points, "
                     f"mean NLL {mean(key, 'nll') - mean('best', 'nll'):+.4f}; higher top-1 in "
                     f"{sum(r[key]['top1'] > r['best']['top1'] for r in rows)} of {n} seeds, lower NLL in "
                     f"{sum(r[key]['nll'] < r['best']['nll'] for r in rows)} of {n}")
    lower = sum(r["calibrated"]["ece"] < r["best"]["ece"] for r in rows)
    lines.append(f"ECE lower after --calibrate on the test split in {lower} of {n} seeds")
    return "\n".join(lines)


def main_cli(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", choices=sorted(DATASETS), default="digits")
    parser.add_argument("--data", type=Path, default=None,
                        help="class folders with train/val/test (default: the --dataset's folder under data/, built "
                             "when absent)")
    parser.add_argument("--epochs", type=int, default=None, help="default: 30 for digits, 15 for photos")
    parser.add_argument("--last", type=int, default=5, help="K of --average last:K")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--quick", action="store_true", help="2 epochs, K 2, seed 0: to check the script works")
    parser.add_argument("--output", type=Path, default=None, help="where the runs go (default: a temporary folder)")
    args, extra = parser.parse_known_args(argv)
    default_epochs, flags = DATASETS[args.dataset]
    data = prepare(args.dataset, args.data)
    epochs, last, seeds = (2, 2, [0]) if args.quick else (args.epochs or default_epochs, args.last, args.seeds)
    with tempfile.TemporaryDirectory() as tmp:
        rows = [run_seed(seed, epochs, last, args.output or Path(tmp), data, [*flags, *extra]) for seed in seeds]
    assert all(r["best"]["top1"] == r["calibrated"]["top1"] for r in rows), "a temperature changed a prediction"
    print(f"{args.dataset}: {epochs} epochs per seed, test split of {data}\n")
    print(table(rows, last))
    return 0


if __name__ == "__main__":
    sys.exit(main_cli())
