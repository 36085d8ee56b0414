"""Knowledge distillation on the bundled digits: no distillation, the file route (``--knowledge`` then
``--distill``) and online distillation (``--teacher``), side by side over several seeds.

Each seed trains the teacher by the quickstart recipe (z_task_shell/configs/digits_resnet18.yaml, resnet18), writes
its probabilities on the training images (``--knowledge train``), then trains the student (``--student``, default
simple_cnn) by the same recipe and epochs three ways: on the labels alone, on ``alpha * teacher + (1 - alpha) *
label`` targets from the file, and with the teacher online (``(1 - alpha) * CE + alpha * T^2 * KL``). It prints
test top-1 and seconds per epoch of each route (the teacher's share of the online route's step time beside it).
The data is copied into the output folder first (``--knowledge`` writes beside it). ``--quick``: 2 epochs, seed 0.
``--task mosaic``: the same on the multi-label digit mosaics (z_task_shell/configs/mosaic_multilabel.yaml, 4 epochs),
online against none on test mAP (``--knowledge`` writes single-label probabilities only: no file route there).
``--task photos``: the three routes on benchmarks/trust.py's photo set (12 classes of scikit-image photo crops; the
recipe at 64x64, 15 epochs, hflip, RandomResizedCrop 0.35-1), a harder task than the digits.

    python benchmarks/distillation.py [--task digits|mosaic|photos] [--epochs E] [--seeds 0 1 2] [--student simple_cnn]
                                      [--alpha 0.7] [--temperature 2] [--quick] [--data DIR] [--output DIR]
                                      [main.py flags]
"""
from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.trust import DATASETS, RECIPE, main_json, prepare  # noqa: E402  (main.py quietly, its summary)


@dataclass(frozen=True)
class Task:
    """A data set and its recipe: the routes it allows (``--knowledge`` refuses multi-label models: no file
    route there), the test metric compared and the default epochs (the recipe's)."""
    recipe: Path
    data: Path
    routes: tuple[str, ...]
    metric: str
    label: str
    epochs: int
    flags: tuple[str, ...] = ()  # added to the recipe's, for the teacher and every student


TASKS = {"digits": Task(RECIPE, ROOT / "data/digits", ("none", "file", "online"), "test_top1", "top-1", 30),
         "mosaic": Task(ROOT / "z_task_shell/configs/mosaic_multilabel.yaml", ROOT / "data/digits_mosaic",
                        ("none", "online"), "test_map", "mAP", 4),
         "photos": Task(RECIPE, ROOT / "data/photos_trust", ("none", "file", "online"), "test_top1", "top-1",
                        DATASETS["photos"][0], tuple(DATASETS["photos"][1]))}


def _history(run: Path) -> list[dict]:
    import json
    return json.loads((run / "metrics.json").read_text())["history"]


def _train(task: Task, tag: str, arch: str, seed: int, epochs: int, out: Path, data: Path,
           extra: list[str]) -> dict:
    """One run of the recipe as ``arch``: its test metric, mean seconds per epoch and teacher share (online)."""
    test = main_json(["--train", "--config", str(task.recipe), "--data", str(data), "--output", str(out),
                      "--arch", arch, "--tag", tag, "--epochs", str(epochs), "--seed", str(seed), "--no_progress",
                      *(["--warmup", "0"] if epochs <= 2 else []), *extra])
    rows = _history(out / arch.replace("/", "-") / tag)
    shares = [row["teacher_share"] for row in rows if "teacher_share" in row]
    return {"top1": test[task.metric], "s_per_epoch": statistics.mean(row["time"] for row in rows),
            "teacher_share": statistics.mean(shares) if shares else None}


def run_seed(task: Task, seed: int, args: argparse.Namespace, epochs: int, out: Path, data: Path,
             extra: list[str]) -> dict:
    """The teacher, then the student each way the task allows, for one seed."""
    result = {"seed": seed, "teacher": _train(task, f"teacher_s{seed}", "resnet18", seed, epochs, out, data, extra)}
    teacher = out / "resnet18" / f"teacher_s{seed}" / "checkpoints/best.pth"
    kd = ["--distill_alpha", str(args.alpha), "--distill_temperature", str(args.temperature)]
    flags = {"none": [], "online": ["--teacher", str(teacher), *kd]}
    if "file" in task.routes:
        knowledge = main_json(["--knowledge", "train", "--resume", str(teacher), "--data", str(data), "--output",
                               str(out), "--overwrite", "--no_progress", *_input_flags(extra)])
        flags["file"] = ["--distill", "--distill_files", knowledge["teacher_file"], *kd]
    for route in task.routes:
        result[route] = _train(task, f"{route}_s{seed}", args.student, seed, epochs, out, data,
                               [*flags[route], *extra])
    return result


def _input_flags(extra: list[str]) -> list[str]:
    """The flags of ``extra`` that --knowledge takes too (the loader's: batch size, workers)."""
    keep, i = [], 0
    while i < len(extra):
        if extra[i] in ("-b", "--batch_size", "-j", "--workers"):
            keep += extra[i:i + 2]
            i += 1
        i += 1
    return keep


def table(rows: list[dict], student: str, task: Task) -> str:
    """The markdown table: per route, the test metric per seed and their mean, and seconds per epoch."""
    seeds, label = [r["seed"] for r in rows], task.label
    lines = [f"| route | {' | '.join(f'{label} seed {s}' for s in seeds)} | mean {label} | s/epoch | teacher share |",
             "|---|" + "---|" * (len(seeds) + 3)]
    for route in ("teacher", *task.routes):
        cells = [r[route] for r in rows]
        name = "teacher resnet18" if route == "teacher" else f"{student} {route}"
        share = [c["teacher_share"] for c in cells if c["teacher_share"] is not None]
        top1 = " | ".join(f"{c['top1']:.2f}" for c in cells)
        shown_share = f"{statistics.mean(share):.0%}" if share else "-"
        lines.append(f"| {name} | {top1} | {statistics.mean(c['top1'] for c in cells):.2f} | "
                     f"{statistics.mean(c['s_per_epoch'] for c in cells):.2f} | {shown_share} |")
    return "\n".join(lines)


def main_cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", choices=sorted(TASKS), default="digits",
                        help="digits or photos (single-label: none, file, online), or mosaic (the multi-label digit "
                             "mosaics: none and online, test mAP)")
    parser.add_argument("--epochs", type=int, default=None,
                        help="default: the task's recipe (30 digits, 4 mosaic, 15 photos)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--student", default="simple_cnn", help="the student's --arch (e.g. mobilenet_v3_small)")
    parser.add_argument("--alpha", type=float, default=0.7, help="--distill_alpha of both routes")
    parser.add_argument("--temperature", type=float, default=2.0, help="--distill_temperature of both routes")
    parser.add_argument("--quick", action="store_true", help="2 epochs, seed 0: to check the script works")
    parser.add_argument("--output", default=None, help="where the runs go (default: a temporary folder)")
    parser.add_argument("--data", type=Path, default=None, help="the task's data (default: the bundled digits, or "
                                                                  "their mosaics, built when absent)")
    args, extra = parser.parse_known_args()
    task = TASKS[args.task]
    if args.data is None and args.task == "mosaic":
        from dataloader.digits import make_mosaic
        args.data = make_mosaic(task.data)
    elif args.data is None:  # the digits, or benchmarks/trust.py's photo set (built when absent)
        args.data = prepare(args.task, None)
    epochs, seeds = (2, [0]) if args.quick else (args.epochs or task.epochs, args.seeds)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(args.output or tmp)
        data = out / "data"
        if not data.exists():
            shutil.copytree(args.data, data)
        rows = [run_seed(task, s, args, epochs, out, data, [*task.flags, *extra]) for s in seeds]
    print(f"\n{args.student} distilled from resnet18, {epochs} epochs, alpha {args.alpha}, T {args.temperature}:\n")
    print(table(rows, args.student, task))


if __name__ == "__main__":
    main_cli()
