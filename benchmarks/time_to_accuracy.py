"""Wall time of ``main.py --train`` to reach a validation top-1 on the bundled digits, on this machine.

The clock starts when the process is launched (imports, dataset caching and model creation count) and
stops at the first epoch whose validation top-1 reaches ``--target``; the run is then stopped with
SIGTERM. Three settings run one after the other:

  recipe    the quickstart recipe (z_task_shell/configs/digits_resnet18.yaml) as it is: 48x48 input,
            decoded once (--cache_dataset memory), channels-last
  recipe32  the same at 32x32 (--image_size 32 32), the recipe's size until it was raised for accuracy:
            each epoch is about 2 times cheaper, but at 30 epochs seeds 0-4 ended up to 1.1 points lower
            (docs/recipes.md#the-quickstart-recipe)
  standard  the recipe on the standard input path: workers decode and augment every image each epoch,
            contiguous memory format

    python benchmarks/time_to_accuracy.py            # about 2 minutes on 2 cores
    python benchmarks/time_to_accuracy.py --quick    # a smoke run (a low target on a tiny budget)
"""
from __future__ import annotations

import argparse
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # config.read_config_file, when run as a script
RECIPE = ROOT / "z_task_shell" / "configs" / "digits_resnet18.yaml"

EPOCH_LINE = re.compile(r"epoch (\d+)/(\d+) .*val loss \S+ top-1 ([\d.]+)")


def standard_recipe(folder: Path) -> Path:
    """The recipe without its speed settings (cache, channels-last), written to ``folder``."""
    import yaml

    from config import read_config_file
    recipe = read_config_file(RECIPE)
    for key in ("cache_dataset", "channels_last"):
        recipe.pop(key, None)
    path = folder / "digits_resnet18_standard.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def time_to(target: float, flags: list[str], data: Path, timeout: float = 280) -> tuple[float | None, int, float]:
    """``(seconds to reach target or None, epochs run, best val top-1)`` for ``main.py --train flags``."""
    with tempfile.TemporaryDirectory() as out:
        cmd = [sys.executable, str(ROOT / "main.py"), "--train", *flags, "--data", str(data), "--output", out,
               "--no_progress"]
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        reached, epochs, best = None, 0, 0.0
        try:
            for line in proc.stderr:
                match = EPOCH_LINE.search(line)
                if match:
                    epochs, best = int(match.group(1)), max(best, float(match.group(3)))
                    if best >= target:
                        reached = time.perf_counter() - start
                        proc.send_signal(signal.SIGTERM)
                        break
                if time.perf_counter() - start > timeout:
                    break
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
            proc.communicate(timeout=120)
    return reached, epochs, best


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=ROOT / "data" / "digits")
    p.add_argument("--target", type=float, default=98.0, help="validation top-1 to reach, percent")
    p.add_argument("--quick", action="store_true", help="a smoke run: target 30%% within 2 epochs of each")
    args = p.parse_args(argv)
    if not (args.data / "train").is_dir():
        subprocess.run([sys.executable, str(ROOT / "utils" / "make_digits.py"), "--out", str(args.data)], check=True)
    with tempfile.TemporaryDirectory() as tmp:
        settings = {"recipe": ["--config", str(RECIPE)],
                    "recipe32": ["--config", str(RECIPE), "--image_size", "32", "32"],
                    "standard": ["--config", str(standard_recipe(Path(tmp)))]}
        if args.quick:
            args.target = 30.0
            settings = {name: flags + ["--epochs", "2", "--warmup", "0"] for name, flags in settings.items()}
        print(f"target: {args.target:g}% val top-1 on {args.data}")
        print(f"{'setting':8s} {'seconds':>8s} {'epochs':>6s} {'val top-1':>9s}  command")
        for name, flags in settings.items():
            seconds, epochs, best = time_to(args.target, flags, args.data)
            shown = " ".join(flags).replace(str(ROOT) + "/", "").replace(tmp + "/", "")
            print(f"{name:8s} {seconds if seconds is not None else float('nan'):8.1f} {epochs:6d} {best:9.2f}  "
                  f"python main.py --train {shown}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
