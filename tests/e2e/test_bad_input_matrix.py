"""Bad input, in one place: each case is a command a user might type on a broken setup, with the exit
code it must end with and the first line of the message it must print (a regex, searched).

Each case runs in a fresh folder, and what is checked is what a user sees: the exit code, the first error
line on stderr, and no traceback. Tool scripts, and the ``main.py`` cases in ``REAL_PROCESS``, run as real
processes (``python main.py ...``); the other ``main.py`` cases call the same ``main.main(argv)`` in this
process, its stderr captured and ``SystemExit`` read as the exit code (a fresh interpreter's torch imports
cost about 4 CPU seconds a case; an exception that escapes ``main()`` fails the case, as a traceback would).
A case's ``setup(tmp, data)`` builds what it needs under ``tmp`` from the tiny folder dataset ``data``
(read-only: copy before changing) and returns the argument list; ``check(tmp)``, when given, asserts
what must (not) be on disk afterwards.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest

from helpers import ROOT, TINY_SIZE


@dataclass(frozen=True)
class Case:
    id: str
    setup: Callable[[Path, Path], list[str]]
    code: int
    first_line: str  # regex searched in the first line of stderr that says ERROR (or the first line at all)
    script: str = "main.py"
    check: Callable[[Path], None] | None = None


def tiny_train(data: Path, out: Path, *extra: str) -> list[str]:
    return ["--train", "--data", str(data), "--arch", "resnet18", "--image_size", str(TINY_SIZE), str(TINY_SIZE),
            "-b", "8", "-j", "0", "--epochs", "1", "--lr", "0.05", "--warmup", "0", "--output", str(out),
            "--no_progress", *extra]


def copy_data(data: Path, tmp: Path) -> Path:
    return shutil.copytree(data, tmp / "data")


def first_error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    errors = [line for line in lines if " ERROR " in line or line.startswith(("error", "main.py: error"))
              or ": error:" in line]
    return (errors or lines or [""])[0]


CASES: list[Case] = []

# ==== flags and config values ====

def _no_run_started(tmp: Path) -> None:
    assert not (tmp / "out").exists(), "a run directory was made before the teacher files were checked"


CASES += [
    Case("flag-of-another-mode", lambda tmp, data: ["--evaluation", "--resume", "b.pth", "--data", str(data),
                                                    "--topk", "3"], 2,
         r"--topk is a --predict option that --evaluation does not read: drop it, or run --predict"),
    Case("resume-missing-reported-before-the-mode-runs",
         lambda tmp, data: ["--evaluation", "--resume", "nothere.pth", "--data", str(data)], 2,
         r"main\.py: error: --resume: file 'nothere\.pth' does not exist"),
    Case("distill-without-teacher-files", lambda tmp, data: tiny_train(data, tmp / "out", "--distill"), 2,
         r"--distill needs teacher files: none given with --distill_files and no distill\*\.txt in .*; "
         r"run --knowledge train", check=_no_run_started),
]

CASES += [
    Case("unknown-arch", lambda tmp, data: tiny_train(data, tmp / "out", "--arch", "resnet181"), 1,
         r"unknown model 'resnet181'.*resnet18"),
]

# ==== run directories: paths, --overwrite, stale best, locks ====

CASES += [
    Case("tag-dotdot-overwrite", lambda tmp, data: _other_runs(tmp) + tiny_train(data, tmp / "out", "--tag", "..",
                                                                                 "--overwrite"), 2,
         r"--tag may hold .* not be '\.' or '\.\.' \(it names the run folder <output>/<arch>/<tag>\), got '\.\.'",
         check=lambda tmp: _other_runs_intact(tmp)),
    Case("tag-dot-overwrite", lambda tmp, data: _other_runs(tmp) + tiny_train(data, tmp / "out", "--tag", ".",
                                                                              "--overwrite"), 2,
         r"--tag may hold .*got '\.' \(see main\.py --train --help\)$", check=lambda tmp: _other_runs_intact(tmp)),
    Case("arch-dotdot-overwrite", lambda tmp, data: _other_runs(tmp) + tiny_train(data, tmp / "out", "--arch", "..",
                                                                                  "--tag", "x", "--overwrite"), 1,
         r"unknown model '\.\.'", check=lambda tmp: _other_runs_intact(tmp)),
    Case("overwrite-foreign-folder", lambda tmp, data: _other_runs(tmp) + tiny_train(data, tmp / "out", "--tag", "b",
                                                                                     "--overwrite"), 1,
         r"--overwrite refused: .*resnet18/b does not hold a training run of --arch resnet18 --tag b",
         check=lambda tmp: _other_runs_intact(tmp)),
    Case("run-dir-locked", lambda tmp, data: _locked(tmp / "out/resnet18/default") + tiny_train(data, tmp / "out"), 1,
         r"run directory .*resnet18/default is in use by another training run \(pid \d+ on host",
         check=lambda tmp: _unlock(tmp / "out/resnet18/default")),
    Case("failed-run-leaves-no-folder", lambda tmp, data: tiny_train(data, tmp / "out", "--num_classes", "5"), 1,
         r"--num_classes 5 disagrees with the data", check=lambda tmp: _absent(tmp / "out")),
]


def _other_runs(tmp: Path) -> list[str]:
    """Folders next to the run directory that a bad --tag/--arch/--overwrite must leave alone."""
    for rel, text in _OTHER_RUNS.items():
        (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp / rel).write_text(text)
    return []


_OTHER_RUNS = {"project.py": "the user's source", "out/resnet18/a/config.yaml": "arch: resnet18\ntag: a\ntrain: true\n",
               "out/resnet34/c/checkpoints/last.pth": "weights", "out/resnet18/b/notes.txt": "not a run"}


def _other_runs_intact(tmp: Path) -> None:
    for rel, text in _OTHER_RUNS.items():
        assert (tmp / rel).read_text() == text, rel
    assert sorted(p.name for p in (tmp / "out/resnet18/b").iterdir()) == ["notes.txt"]


_HELD: dict = {}  # run directory -> the RunLock this process holds on it


def _locked(run_dir: Path) -> list[str]:
    """Hold run_dir's lock in this (the test) process while the case runs."""
    from utils.runlock import RunLock
    run_dir.mkdir(parents=True)
    _HELD[run_dir] = RunLock(run_dir)
    _HELD[run_dir].acquire()
    return []


def _unlock(run_dir: Path) -> None:
    from utils.runlock import LOCK_NAME
    assert sorted(p.name for p in run_dir.iterdir()) == [LOCK_NAME]  # the refused run wrote nothing
    _HELD.pop(run_dir).release()


def _absent(path: Path) -> None:
    assert not path.exists(), sorted(path.rglob("*"))


# ==== decompression bombs and image limits ====

CASES += [
    Case("bomb-png-in-training", lambda tmp, data: tiny_train(_with_bomb(data, tmp), tmp / "out"), 1,
         r"ImageTooLarge: \S*/train/1/bomb\.png: 30000x30000 pixels .*over the limit of 89478485 pixels.*"
         r"--max_image_pixels.*--skip_bad_images"),
    Case("bomb-png-with-2-workers-same-line",
         lambda tmp, data: tiny_train(_with_bomb(data, tmp), tmp / "out", "-j", "2"),
         1, r"ImageTooLarge: \S*/train/1/bomb\.png: 30000x30000 pixels .*--max_image_pixels"),
    Case("zip-member-too-large", lambda tmp, data: tiny_train(_zip_with_huge_member(data, tmp), tmp / "out",
                                                              "--dataset", "zip"), 1,
         r"train\.zip:1/huge\.png: 402653184 bytes uncompressed, over the limit of 374691156 bytes"
         r".*--max_image_pixels"),
    Case("max-image-pixels-negative", lambda tmp, data: tiny_train(data, tmp / "out", "--max_image_pixels", "-1"), 2,
         r"--max_image_pixels must be >= 0"),
    Case("unreadable-file-is-a-bad-image", lambda tmp, data: tiny_train(_with_dangling(data, tmp), tmp / "out"), 1,
         r"dangling\.png: cannot read \(No such file or directory\).*--skip_bad_images"),
    Case("skip-bad-images-skips-an-unreadable-file",
         lambda tmp, data: tiny_train(_with_dangling(data, tmp), tmp / "out", "--skip_bad_images"), 0, r"",
         check=lambda tmp: _assert_skipped(tmp / "out/resnet18/default/metrics.json", 1)),
    Case("txt-label-gap-without-classes-txt",
         lambda tmp, data: tiny_train(_txt_with_label(data, tmp, 15), tmp / "out", "--dataset", "txt"), 1,
         r"train\.txt:5: label 15 leaves label 3 without an image: with no classes\.txt"),
    Case("check-images-missing-folder", lambda tmp, data: [str(tmp / "nowhere"), "--no_progress"], 2,
         r"check_images\.py: error: dataset root '\S*nowhere' does not exist", script="utils/check_images.py"),
    Case("check-images-move-target-inside-the-data",
         lambda tmp, data: [str(data), "--move_bad_to", str(data / "train" / "bad"), "--no_progress"], 2,
         r"--move_bad_to \S*/train/bad is inside the dataset", script="utils/check_images.py"),
    Case("check-images-bombs-are-bad-not-a-crash",  # exit 1, the findings on stdout, nothing on stderr
         lambda tmp, data: [str(_with_bomb(data, tmp, (13000, 13000))), "-j", "2", "--no_progress"], 1, r"^$",
         script="utils/check_images.py"),
    Case("demo-training-checkpoint", lambda tmp, data: [str(_training_checkpoint(tmp)), str(data / "test")], 1,
         r"ckpt\.pth is a training checkpoint \(torch\.save\), not an exported model: export it with "
         r"python main\.py --jit --resume", script="demos/classifier.py"),
    Case("demo-empty-folder", lambda tmp, data: [str(_training_checkpoint(tmp)), str(_mkdir(tmp / "empty"))], 1,
         r"no images \(\.jpg.*\) in the folder \S*empty", script="demos/classifier.py"),
]


def _with_bomb(data: Path, tmp: Path, size: tuple[int, int] = (30000, 30000)) -> Path:
    """A copy of the data with a 30000x30000 PNG (110 KB, 2.7 GB decoded) in train/1 (and one of ``size``)."""
    from helpers import write_png_bomb
    root = copy_data(data, tmp)
    write_png_bomb(root / "train" / "1" / "bomb.png")
    if size != (30000, 30000):
        write_png_bomb(root / "train" / "7" / "big.png", *size)
    return root


def _with_dangling(data: Path, tmp: Path) -> Path:
    root = copy_data(data, tmp)
    (root / "train" / "7" / "dangling.png").symlink_to(tmp / "gone.png")
    return root


def _zip_with_huge_member(data: Path, tmp: Path) -> Path:
    """The data as zip archives, train.zip with one more member of 384 MiB of zeros (0.4 MB deflated)."""
    import zipfile

    from dataloader.layout_writers import write_zip_archives
    root = write_zip_archives(data, tmp / "zip")
    with zipfile.ZipFile(root / "train.zip", "a", zipfile.ZIP_DEFLATED, compresslevel=6) as zf:
        with zf.open("1/huge.png", "w", force_zip64=True) as f:
            for _ in range(6):
                f.write(bytes(64 * 2**20))
    with open(root / "train_map.txt", "a") as f:
        f.write("1/huge.png\t1\n")
    return root


def _txt_with_label(data: Path, tmp: Path, label: int) -> Path:
    """The data as txt lists without classes.txt, line 5 of train.txt relabelled."""
    from dataloader.layout_writers import write_txt_lists
    root = write_txt_lists(data, tmp / "txt")
    (root / "classes.txt").unlink()
    lines = (root / "train.txt").read_text().splitlines()
    lines[4] = f"{lines[4].rsplit(' ', 1)[0]} {label}"
    (root / "train.txt").write_text("\n".join(lines) + "\n")
    return root


def _training_checkpoint(tmp: Path) -> Path:
    import torch
    torch.save({"model": {"fc.weight": torch.zeros(3, 4)}, "epoch": 1}, tmp / "ckpt.pth")
    return tmp / "ckpt.pth"


def _mkdir(path: Path) -> Path:
    path.mkdir()
    return path


def _assert_skipped(metrics: Path, n: int) -> None:
    import json
    assert json.loads(metrics.read_text())["history"][0]["skipped_train"] == n

# ==== non-finite numbers, one-line messages, silent acceptance ====

def write_text_or_bytes(path: Path, content: str | bytes) -> str:
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return str(path)


def evaluation_of(data: Path, checkpoint: str) -> list[str]:
    return ["--evaluation", "--resume", checkpoint, "--data", str(data), "-j", "0", "--no_progress"]


def malicious_checkpoint(path: Path) -> str:
    """A checkpoint whose unpickling would run os.system (torch.save writes it; loading it must refuse)."""
    import os

    import torch

    class Payload:
        def __reduce__(self):
            return os.system, ("echo pwned",)
    torch.save({"model": {}, "payload": Payload()}, path)
    return str(path)


def run_dir_with_damaged_config(out: Path) -> Path:
    """A run directory whose config.yaml is not YAML (beside a last.pth, so that it is read)."""
    run = out / "resnet18" / "default"
    (run / "checkpoints").mkdir(parents=True)
    write_text_or_bytes(run / "checkpoints" / "last.pth", "x")
    write_text_or_bytes(run / "config.yaml", "lr: [0.1\nepochs: 3\n")
    return out


def assert_absent(path: Path) -> None:
    assert not path.exists(), path


CASES += [
    Case("lr-inf", lambda tmp, data: tiny_train(data, tmp / "out", "--lr", "inf"), 2,
         r"argument --lr: 'inf' is not a finite number"),
    Case("lr-overflows-to-inf", lambda tmp, data: tiny_train(data, tmp / "out", "--lr", "1e400"), 2,
         r"argument --lr: '1e400' is not a finite number"),
    Case("yaml-lr-inf",
         lambda tmp, data: [*tiny_train(data, tmp / "out"), "--config",
                            write_text_or_bytes(tmp / "c.yaml", "lr: .inf\n")],
         2, r"c\.yaml: key 'lr' \(flag --lr\) has invalid value inf: inf is not a finite number"),
    Case("nan-validation-loss", lambda tmp, data: tiny_train(data, tmp / "out", "--lr", "100"), 1,
         r"FloatingPointError: the validation loss became nan at epoch 1 \(that epoch is not saved.*lower --lr",
         check=lambda tmp: assert_absent(tmp / "out/resnet18/default/checkpoints/best.pth")),
    Case("text-file-as-checkpoint",
         lambda tmp, data: evaluation_of(data, write_text_or_bytes(tmp / "notes.pth", "epoch 3: 91% top-1\n")), 1,
         r"CheckpointError: .*notes\.pth is not a PyTorch checkpoint"),
    Case("random-bytes-as-checkpoint",
         lambda tmp, data: evaluation_of(data, write_text_or_bytes(tmp / "r.pth", bytes(range(256)) * 8)),
         1, r"^(?!.*weights_only=False).*CheckpointError: .*r\.pth is not a PyTorch checkpoint"),
    Case("malicious-checkpoint", lambda tmp, data: evaluation_of(data, malicious_checkpoint(tmp / "evil.pth")), 1,
         r"^(?!.*weights_only=False).*evil\.pth cannot be loaded safely \(weights_only=True\): unpickling it would "
         r"import and call (posix|nt)\.system"),
    Case("unwritable-output", lambda tmp, data: tiny_train(data, "/sys/playground_out"), 1,
         r"cannot use /sys/playground_out.*: (Operation not permitted|Permission denied|Read-only file system); "
         r"check its permissions"),
    Case("damaged-config-yaml-in-run-dir",
         lambda tmp, data: tiny_train(data, run_dir_with_damaged_config(tmp / "out")), 1,
         r"ConfigError: .*resnet18/default/config\.yaml is damaged \(line 2, column 7: expected .*\); "
         r"pass --overwrite"),
    Case("huge-image-size", lambda tmp, data: tiny_train(data, tmp / "out", "--image_size", "100000", "100000"), 2,
         r"--image_size must be two integers in 8\.\.4096, got \[100000, 100000\]"),
    Case("training-flags-with-evaluation",
         lambda tmp, data: [*evaluation_of(data, write_text_or_bytes(tmp / "b.pth", "x")), "--epochs", "5",
                            "--lr", "0.1", "--ema"], 2,
         r"--evaluation ignores training options, but the command line gives --ema, --epochs, --lr: drop them"),
    Case("training-flags-with-lr-finder", lambda tmp, data: ["--lr_finder", "--data", str(data), "--warmup", "0"], 2,
         r"--lr_finder ignores training options, but the command line gives --warmup: drop it"),
]

# ==== WebDataset shards (--dataset wds) ====

def _shards(data: Path, tmp: Path, damage: Callable[[Path], None] | None = None) -> Path:
    """The tiny dataset as shards (the converter's), then ``damage`` done to them."""
    from dataloader.layout_writers import write_wds_shards
    out = write_wds_shards(data, tmp / "shards")
    if damage is not None:
        damage(out)
    return out


def _drop_a_cls(shards: Path) -> None:
    import tarfile
    path = shards / "train-000000.tar"
    with tarfile.open(path) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
    with tarfile.open(path, "w") as tar:
        for member, body in members:
            if member.name != members[1][0].name:  # the first sample's .cls (members: KEY.png, KEY.cls, ...)
                import io
                tar.addfile(member, io.BytesIO(body))


def _truncate(shards: Path) -> None:
    path = shards / "train-000000.tar"
    path.write_bytes(path.read_bytes()[:512 + 40])  # inside the first member's bytes


def _lose_a_shard(shards: Path) -> None:
    (shards / "test-000000.tar").unlink()


def _no_val_split(shards: Path) -> None:
    import json
    info = json.loads((shards / "_info.json").read_text())
    del info["splits"]["validation"]
    (shards / "_info.json").write_text(json.dumps(info))


def wds_train(tmp: Path, data: Path, damage=None, *extra: str) -> list[str]:
    return tiny_train(_shards(data, tmp, damage), tmp / "out", "--dataset", "wds", *extra)


CASES += [
    Case("wds-sample-without-cls", lambda tmp, data: wds_train(tmp, data, _drop_a_cls), 1,
         r"ShardError: \S*train-000000\.tar: sample '[^']+' has no \.cls label; every sample needs both"),
    Case("wds-truncated-tar", lambda tmp, data: wds_train(tmp, data, _truncate), 1,
         r"ShardError: \S*train-000000\.tar: not a readable tar file .*truncated or damaged: write it again"),
    Case("wds-truncated-tar-2-workers", lambda tmp, data: wds_train(tmp, data, _truncate, "-j", "2"), 1,
         r"ShardError: \S*train-000000\.tar: not a readable tar file .*truncated or damaged: write it again$"),
    Case("wds-info-names-a-missing-shard", lambda tmp, data: wds_train(tmp, data, _lose_a_shard), 1,
         r"ShardError: \S*_info\.json: shard \S*test-000000\.tar of split 'test' does not exist; fix "
         r"splits\.test\.filenames"),
    Case("wds-unknown-split", lambda tmp, data: wds_train(tmp, data, _no_val_split), 1,
         r"ShardError: split 'val' not found in \S*shards for --dataset wds \(splits there: test, train\)"),
    Case("wds-class-balanced", lambda tmp, data: wds_train(tmp, data, None, "--class_balanced"), 1,
         r"class-balanced sampling .* streamed shards \(--dataset wds\) do not offer; add --cache_dataset memory"),
    Case("wds-cache-over-the-limit",
         lambda tmp, data: wds_train(tmp, data, None, "--cache_dataset", "memory", "--cache_max_gb", "0.000001"), 1,
         r"--cache_dataset memory would hold the \d+ train images of \S*shards .* over --cache_max_gb 1e-06"),
]

# ==== correctness round (mnasnet, sync BN, LR finder, CAM, DDP evaluation) ====

CASES += [
    Case("sync-bn-on-cpu", lambda tmp, data: tiny_train(data, tmp / "out", "--sync_bn", "--device", "cpu"), 1,
         r"--sync_bn needs CUDA devices .* on cpu; drop --sync_bn",
         check=lambda tmp: None if not (tmp / "out").exists() else pytest.fail("a run directory was created")),
]

# ==== pretrained weights and fine-tuning ====

def _nothing_started(tmp: Path) -> None:
    assert not (tmp / "out").exists(), "a run directory was made before the weights were resolved"


CASES += [
    Case("pretrained-unknown-weights-name", lambda tmp, data: tiny_train(data, tmp / "out", "--pretrained",
                                                                          "IMAGENET1K_V9"), 1,
         r"--pretrained: resnet18 has no weights 'IMAGENET1K_V9'; choose imagenet .*IMAGENET1K_V1",
         check=_nothing_started),
    Case("pretrained-name-for-a-model-without-weights",
         lambda tmp, data: tiny_train(data, tmp / "out", "--arch", "simple_cnn", "--pretrained", "imagenet"), 1,
         r"--pretrained: simple_cnn \(playground\) has no named weights; give a local file", check=_nothing_started),
    Case("pretrained-missing-file", lambda tmp, data: tiny_train(data, tmp / "out", "--pretrained", "w/missing.pth"), 2,
         r"--pretrained: file 'w/missing.pth' does not exist"),
    Case("unfreeze-epoch-without-freeze-backbone",
         lambda tmp, data: tiny_train(data, tmp / "out", "--unfreeze_epoch", "1"), 2,
         r"--unfreeze_epoch needs --freeze_backbone"),
    Case("drop-path-rate-unsupported",
         lambda tmp, data: tiny_train(data, tmp / "out", "--arch", "resnest50", "--drop_path_rate", "0.1"), 1,
         r"--drop_path_rate: resnest50 \(resnest\) has no such setting"),
]

# ==== experiments: compare, sweep, search ====

def sweep_setup(body: str, *extra: str) -> Callable[[Path, Path], list[str]]:
    def setup(tmp: Path, data: Path) -> list[str]:
        (tmp / "s.yaml").write_text(body)
        return ["--sweep", str(tmp / "s.yaml"), "--output", str(tmp / "out"), *extra]
    return setup


def nothing_written(tmp: Path) -> None:
    assert not (tmp / "out").exists()


CASES += [
    Case("sweep-unknown-flag", sweep_setup("grid: {lrr: [0.1, 0.2]}\n"), 1,
         r"--sweep: .*s\.yaml: grid: unknown key 'lrr' \(did you mean lr", check=nothing_written),
    Case("sweep-two-kinds", sweep_setup("grid: {lr: [0.1]}\nvariants: {a: {}}\n"), 1,
         r"needs exactly one of grid:, variants:, search:", check=nothing_written),
    Case("sweep-bad-variant-combination", sweep_setup("base: {epochs: 2}\nvariants: {long_warmup: {warmup: 5}}\n"),
         1, r"--sweep: variant long_warmup: --warmup \(5.0 epochs\) must be shorter than --epochs \(2\)",
         check=nothing_written),
    Case("search-without-trials", sweep_setup("search: {lr: {low: 0.001, high: 0.1, log: true}}\n"), 1,
         r"has a search space: give the number of trials"),
    Case("sweep-devices-bad", sweep_setup("grid: {lr: [0.1]}\n", "--sweep_devices", "0,gpu1"), 2,
         r"--sweep_devices must be comma-separated CUDA indices or cpu"),
    Case("trials-without-sweep", lambda tmp, data: ["--train", "--trials", "3"], 2, r"--trials is a --sweep option"),
    Case("compare-missing", lambda tmp, data: ["--compare", str(tmp / "no_such_runs")], 1,
         r"--compare: '.*no_such_runs' does not exist"),
    Case("compare-no-runs", lambda tmp, data: ["--compare", str(data)], 1,
         r"--compare: no run directories \(folders with a config\.yaml\) under"),
]


# ==== int8 and OpenVINO export ====

CASES += [
    Case("quantize-without-export", lambda tmp, data: ["--evaluation", "--resume", str(_training_checkpoint(tmp)),
                                                       "--quantize", "int8"], 2,
         r"--quantize is a --onnx option that --evaluation does not read: drop it, or run --onnx"),
    Case("openvino-entropy-calibration", lambda tmp, data: ["--openvino", "--quantize", "int8", "--calib_method",
                                                            "entropy", "--resume", str(_training_checkpoint(tmp))], 2,
         r"--calib_method entropy is ONNX Runtime's; OpenVINO \(NNCF\) calibrates with minmax or percentile"),
    Case("calib-images-zero", lambda tmp, data: ["--onnx", "--quantize", "int8", "--calib_images", "0",
                                                 "--resume", str(_training_checkpoint(tmp))], 2,
         r"--calib_images must be >= 1, got 0"),
    Case("max-accuracy-drop-negative", lambda tmp, data: ["--onnx", "--quantize", "int8", "--max_accuracy_drop", "-1",
                                                          "--resume", str(_training_checkpoint(tmp))], 2,
         r"--max_accuracy_drop must be >= 0 points, got -1"),
]


# ==== fp16 ONNX, Triton, k-NN (#32) ====

CASES += [
    Case("half-with-int8", lambda tmp, data: ["--onnx", "--half", "--quantize", "int8",
                                              "--resume", str(_training_checkpoint(tmp))], 2,
         r"--half with --quantize int8: the int8 file is made from the fp32 one; export one of the two"),
    Case("half-with-jit", lambda tmp, data: ["--jit", "--half", "--resume", str(_training_checkpoint(tmp))], 2,
         r"--half is a --onnx option that --jit does not read"),
    Case("triton-name-a-path", lambda tmp, data: ["--triton", "--triton_name", "../x",
                                                  "--resume", str(_training_checkpoint(tmp))], 2,
         r"--triton_name '\.\./x' is a folder name in the model repository: use letters, digits"),
    Case("triton-max-batch-zero", lambda tmp, data: ["--triton", "--triton_max_batch", "0",
                                                     "--resume", str(_training_checkpoint(tmp))], 2,
         r"--triton_max_batch must be >= 1, got 0"),
    Case("knn-zero", lambda tmp, data: ["--evaluation", "--knn", "0", "--resume", str(_training_checkpoint(tmp))], 2,
         r"--knn K needs K >= 1 neighbours, got 0"),
    Case("knn-vote-without-knn", lambda tmp, data: ["--evaluation", "--knn_vote", "majority",
                                                    "--resume", str(_training_checkpoint(tmp))], 2,
         r"--knn_vote is read only with --knn K"),
    Case("knn-train-split", lambda tmp, data: ["--evaluation", "--knn", "3", "--eval_split", "train",
                                               "--resume", str(_training_checkpoint(tmp))], 2,
         r"--knn scores --eval_split val or test .*: use --eval_split val or test"),
]


# ==== round three: cached named weights (#25 item 1) ====

CACHED_MAIN = "tests/e2e/main_in_local_caches.py"  # main.py with TORCH_HOME/HF_HOME in the case's folder, offline


def _cached_weights(arch: str, content: Callable[[Path], bytes]) -> Callable[[Path, Path], list[str]]:
    """Setup: ``content(path)`` as the file the library caches ``arch``'s imagenet weights in (under
    ``tmp/torch`` or ``tmp/hf``, the HF snapshot layout for timm), a copy of it in ``tmp/expected``; then
    ``--train --pretrained imagenet``."""
    def setup(tmp: Path, data: Path) -> list[str]:
        from models.hub import resolve_weights
        cached = resolve_weights(arch, "imagenet").cache_path
        if arch.startswith("timm/"):
            repo = tmp / "hf" / "hub" / cached.parent.parent.parent.name
            (repo / "refs").mkdir(parents=True)
            (repo / "refs" / "main").write_text("0123abcd")
            path = repo / "snapshots" / "0123abcd" / cached.name
        else:
            path = tmp / "torch" / "hub" / "checkpoints" / cached.name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content(path))
        (tmp / "expected").write_bytes(path.read_bytes())
        return tiny_train(data, tmp / "out", "--arch", arch, "--pretrained", "imagenet")
    return setup


def _torch_save(obj: object, path: Path) -> bytes:
    import torch
    torch.save(obj, path)
    return path.read_bytes()


def _resnet18_file(path: Path, wrong_fc: bool = False) -> bytes:
    """torchvision's resnet18 state dict saved at ``path`` (with a 10-class fc: the wrong shape)."""
    import torch
    import torchvision
    state = torchvision.models.resnet18().state_dict()
    if wrong_fc:
        state["fc.weight"] = torch.zeros(10, 512)
    return _torch_save(state, path)


class _Payload:
    """Unpickling runs ``touch PWNED`` in the current folder (the issue's reproduction)."""

    def __reduce__(self):
        import os
        return os.system, ("touch PWNED",)


def _timm_safetensors(path: Path) -> bytes:
    import timm
    from safetensors.torch import save_file
    save_file(timm.create_model("test_resnet").state_dict(), str(path))
    return path.read_bytes()


def _cache_kept_nothing_ran(tmp: Path) -> None:
    """The payload did not run, the cached file is as it was (only the user deletes it), no run folder."""
    assert not (tmp / "PWNED").exists(), "the cached file's payload ran"
    cached = [p for p in (tmp / "torch").rglob("*.pth")] + [p for p in (tmp / "hf").rglob("model.safetensors")]
    assert len(cached) == 1 and cached[0].read_bytes() == (tmp / "expected").read_bytes()
    assert not (tmp / "out").exists()


_CACHED_LINE = (r"CheckpointError: --pretrained: the cached {} weights cannot be used: .*{}.*\. Delete \S*{} \("
                r".*--pretrained PATH$")
_RESNET18 = ("ResNet18_Weights\\.IMAGENET1K_V1", "torch/hub/checkpoints/resnet18-f37072fd\\.pth")
_TIMM = ("timm/test_resnet\\.r160_in1k",
         "hf/hub/models--timm--test_resnet\\.r160_in1k/snapshots/0123abcd/model\\.safetensors")

CASES += [
    Case("cached-weights-malicious-pickle",
         _cached_weights("resnet18", lambda p: _torch_save({"fc.bias": _Payload()}, p)), 1,
         _CACHED_LINE.format(_RESNET18[0], r"unpickling it would import and call posix\.system", _RESNET18[1]),
         script=CACHED_MAIN, check=_cache_kept_nothing_ran),
    Case("cached-weights-empty", _cached_weights("resnet18", lambda p: b""), 1,
         _CACHED_LINE.format(_RESNET18[0], "is empty", _RESNET18[1]), script=CACHED_MAIN,
         check=_cache_kept_nothing_ran),
    Case("cached-weights-truncated",
         _cached_weights("resnet18", lambda p: _resnet18_file(p)[:200_000]), 1,
         _CACHED_LINE.format(_RESNET18[0], "is corrupt or truncated", _RESNET18[1]), script=CACHED_MAIN,
         check=_cache_kept_nothing_ran),
    Case("cached-weights-random-bytes", _cached_weights("resnet18", lambda p: bytes(range(256)) * 64), 1,
         _CACHED_LINE.format(_RESNET18[0], "is not a PyTorch checkpoint", _RESNET18[1]), script=CACHED_MAIN,
         check=_cache_kept_nothing_ran),
    Case("cached-weights-wrong-shape",
         _cached_weights("resnet18", lambda p: _resnet18_file(p, wrong_fc=True)), 1,
         _CACHED_LINE.format(_RESNET18[0], r"does not fit the library's ResNet \(RuntimeError: .*size mismatch for "
                             r"fc\.weight", _RESNET18[1]), script=CACHED_MAIN, check=_cache_kept_nothing_ran),
    Case("cached-weights-corrupt-safetensors",
         _cached_weights("timm/test_resnet", lambda p: _timm_safetensors(p)[:-100]), 1,
         _CACHED_LINE.format(_TIMM[0], "is not a valid safetensors file", _TIMM[1]), script=CACHED_MAIN,
         check=_cache_kept_nothing_ran),
]


# ==== round three: sweeps and searches (#25 items 2 and 6) ====

SEARCH = "search: {lr: [0.05]}\ntrials: 1\n"


def _study_db(content: bytes | None, mode: int = 0o644) -> Callable[[Path, Path], list[str]]:
    """A search whose default study.db already holds ``content`` (None: an empty SQLite file), mode ``mode``."""
    def setup(tmp: Path, data: Path) -> list[str]:
        import os
        if mode & 0o200 == 0 and os.geteuid() == 0:
            pytest.skip("root writes to read-only files")
        db = tmp / "out/s/study.db"
        db.parent.mkdir(parents=True)
        db.write_bytes(content or b"")
        db.chmod(mode)
        return sweep_setup(SEARCH)(tmp, data)
    return setup


def _study_db_unchanged(tmp: Path) -> None:
    assert (tmp / "out/s/study.db").read_bytes() == b"\x00garbage" * 500
    assert sorted(p.name for p in (tmp / "out/s").iterdir()) == ["study.db"]


CASES += [
    Case("sweep-study-db-damaged", _study_db(b"\x00garbage" * 500), 1,
         r"--sweep: cannot use the study database .*study\.db: .*file is not a database; if it is damaged, "
         r"move it away",
         check=_study_db_unchanged),
    Case("sweep-study-db-read-only", _study_db(None, 0o444), 1,
         r"--sweep: cannot use the study database .*study\.db: the file is read-only; .*make it writable"),
    Case("sweep-study-storage-bad-url", sweep_setup(SEARCH, "--study_storage", "foo://bar"), 1,
         r"--study_storage foo://bar: cannot open the study: .*foo; give an Optuna storage URL", check=nothing_written),
    Case("sweep-study-storage-missing-folder",
         lambda tmp, data: sweep_setup(SEARCH, "--study_storage", f"sqlite:///{tmp}/no_such_dir/s.db")(tmp, data), 1,
         r"--study_storage sqlite:///.*no_such_dir/s\.db: cannot open the study: .*unable to open database file",
         check=nothing_written),
    Case("sweep-study-storage-missing-driver",
         sweep_setup(SEARCH, "--study_storage", "postgresql://me:secret@localhost/db"), 1,
         r"--study_storage postgresql://me:\*\*\*@localhost/db: cannot open the study: its database driver is not "
         r"installed", check=nothing_written),
    Case("sweep-search-range-inf", sweep_setup("search: {lr: {low: 0.001, high: .inf}}\ntrials: 2\n"), 1,
         r"s\.yaml: search: lr: low and high must be finite numbers", check=nothing_written),
    Case("sweep-search-step-zero", sweep_setup("search: {lr: {low: 0.001, high: 0.1, step: 0}}\ntrials: 2\n"), 1,
         r"s\.yaml: search: lr: .*step \(if given\) a number > 0", check=nothing_written),
    Case("sweep-sampler-seed-list", sweep_setup(SEARCH + "sampler_seed: [1, 2]\n"), 1,
         r"s\.yaml: sampler_seed: expected an integer >= 0, got \[1, 2\]", check=nothing_written),
    Case("sweep-pruning-warmup-list", sweep_setup(SEARCH + "pruning: {warmup_epochs: [1]}\n"), 1,
         r"s\.yaml: pruning: warmup_epochs: expected an integer >= 0, got \[1\]", check=nothing_written),
    Case("sweep-grid-null", sweep_setup("grid: {lr: [null]}\n"), 1,
         r"s\.yaml: grid: lr: key 'lr' \(flag --lr\) has invalid value None: expected a number", check=nothing_written),
    Case("sweep-variant-named-like-a-flag", sweep_setup("variants: {-x: {}}\n"), 1,
         r"s\.yaml: variants: variant name '-x' becomes a run tag: .*not starting with '-'", check=nothing_written),
    Case("sweep-grid-with-trials", sweep_setup("grid: {lr: [0.1]}\n", "--trials", "3"), 1,
         r"--trials is a search option, and .*s\.yaml has no search: \(it has grid:\); drop --trials",
         check=nothing_written),
    Case("sweep-variants-with-study-storage", sweep_setup("variants: {a: {}}\n", "--study_storage", "sqlite:///x.db"),
         1, r"--study_storage is a search option, .*\(it has variants:\)", check=nothing_written),
    Case("sweep-grid-too-large", sweep_setup("grid: {" + ", ".join(f"{k}: [{', '.join(map(str, range(1, 11)))}]"
                                                                   for k in ("epochs", "seed", "batch_size", "workers"))
                                             + "}\n"),
         1, r"s\.yaml: grid: 10000 combinations \(10 x 10 x 10 x 10\) are more than the limit of 1000; .*"
            r"--max_variants 10000", check=nothing_written),
]


# ==== round three: files outside the named paths (#25 item 3) ====

_BEFORE: dict = {}  # (tmp, folder) -> the folder's listing before the case ran


def _listing(folder: Path) -> dict[str, tuple]:
    """Every entry under ``folder`` (links not followed): kind, size, mtime, link target."""
    import os
    return {str(p.relative_to(folder)): (p.lstat().st_mode, p.lstat().st_size, p.lstat().st_mtime_ns,
                                         os.readlink(p) if p.is_symlink() else None)
            for p in [folder, *sorted(folder.rglob("*"))]}


def _remember(tmp: Path, *folders: Path) -> None:
    for folder in folders:
        _BEFORE[(tmp, folder)] = _listing(folder)


def _unchanged(tmp: Path, *also: Path) -> None:
    """Every folder remembered for this case is as it was; ``also`` must exist."""
    for (case_tmp, folder), before in list(_BEFORE.items()):
        if case_tmp == tmp:
            assert _listing(folder) == before, folder
            del _BEFORE[(case_tmp, folder)]
    for path in also:
        assert path.exists(), sorted(p.name for p in path.parent.iterdir()) if path.parent.exists() else path


def _bad_link_to_outside(data: Path, tmp: Path) -> Path:
    """A copy of the data whose train/1/link.png is a link to the user's outside/precious.png (not an image)."""
    root = copy_data(data, tmp)
    (tmp / "outside").mkdir()
    (tmp / "outside" / "precious.png").write_text("the user's own file")
    (root / "train" / "1" / "link.png").symlink_to(tmp / "outside" / "precious.png")
    _remember(tmp, tmp / "outside")
    return root


def _link_moved(tmp: Path) -> None:
    moved = tmp / "quarantine" / "train" / "1" / "link.png"
    assert moved.is_symlink() and moved.resolve() == (tmp / "outside" / "precious.png").resolve()
    assert not (tmp / "data" / "train" / "1" / "link.png").is_symlink()
    _unchanged(tmp, tmp / "outside" / "precious.png")


def _class_linked_to_another(data: Path, tmp: Path) -> Path:
    root = copy_data(data, tmp)
    (root / "train" / "7dup").symlink_to("7")
    _remember(tmp, root)
    return root


def _one_file_two_labels(data: Path, tmp: Path, kind: str) -> Path:
    """The data as txt lists or zip archives, with train's first file listed again under label 1."""
    from dataloader.layout_writers import write_txt_lists, write_zip_archives
    root = (write_txt_lists if kind == "txt" else write_zip_archives)(data, tmp / kind)
    listing = root / ("train.txt" if kind == "txt" else "train_map.txt")
    lines = listing.read_text().splitlines()
    name = lines[0].rsplit(" " if kind == "txt" else "\t", 1)[0]
    listing.write_text("\n".join(lines + [name + (" 1" if kind == "txt" else "\t1")]) + "\n")
    _remember(tmp, root)
    return root


def _loose_checkpoint(data: Path, tmp: Path) -> Path:
    """``tmp/models/model.pth``: a trained-format checkpoint outside any run directory, beside the user's
    own log.txt and notes; remembered, with the data, to be left as they were."""
    from helpers import calibrated_checkpoint
    ckpt = calibrated_checkpoint(tmp / "made", "resnet18", data, TINY_SIZE)
    (tmp / "models").mkdir()
    shutil.copy(ckpt, tmp / "models" / "model.pth")
    (tmp / "models" / "log.txt").write_text("the user's own log\n")
    shutil.rmtree(tmp / "made")
    _remember(tmp, tmp / "models", data)
    return tmp / "models" / "model.pth"


def _loose(mode: list[str], *extra: str) -> Callable[[Path, Path], list[str]]:
    return lambda tmp, data: [*mode, "--resume", str(_loose_checkpoint(data, tmp)), "--data", str(data), "-j", "0",
                              "--no_progress", "--output", str(tmp / "out"), *extra]


def _earlier_prediction(tmp: Path, data: Path) -> list[str]:
    """A run directory whose predict/test/ holds an earlier prediction of the same source."""
    from helpers import calibrated_checkpoint
    ckpt = calibrated_checkpoint(tmp / "run", "resnet18", data, TINY_SIZE)
    earlier = tmp / "run" / "predict" / "test"
    (earlier / "images").mkdir(parents=True)
    (earlier / "predictions.csv").write_text("path,class_1,prob_1\nearlier.png,7,1.000000\n")
    (earlier / "predictions.log").write_text("earlier.png\t7 1.0000\n")
    (earlier / "images" / "00000_earlier.png").write_bytes(b"earlier")
    _remember(tmp, earlier, data)
    return ["--predict", str(data / "test"), "--resume", str(ckpt), "-j", "0", "--no_progress", "-v", "-s"]


def _second_prediction(tmp: Path) -> None:
    second = tmp / "run" / "predict" / "test-2"
    rows = (second / "predictions.csv").read_text().splitlines()
    assert len(rows) == 13 and "earlier" not in "".join(rows) and len(list((second / "images").iterdir())) == 12
    _unchanged(tmp, second / "predictions.log")


LOOSE_RUN = "out/resnet18/model"

CASES += [
    Case("check-images-moves-a-bad-link-never-its-target",
         lambda tmp, data: [str(_bad_link_to_outside(data, tmp)), "--move_bad_to", str(tmp / "quarantine"),
                            "--no_progress"], 1, r"^$", script="utils/check_images.py", check=_link_moved),
    Case("check-images-reports-a-class-linked-to-another",  # exit 1, the finding on stdout, nothing on stderr
         lambda tmp, data: [str(_class_linked_to_another(data, tmp)), "--no_progress"], 1, r"^$",
         script="utils/check_images.py", check=_unchanged),
    Case("train-refuses-a-class-linked-to-another",
         lambda tmp, data: tiny_train(_class_linked_to_another(data, tmp), tmp / "out"), 1,
         r"DatasetError: class folders \S*/train/7 and \S*/train/7dup are the same folder .*under two labels; "
         r"remove the link", check=lambda tmp: (_unchanged(tmp), _absent(tmp / "out"))),
    Case("train-refuses-a-txt-file-under-two-labels",
         lambda tmp, data: tiny_train(_one_file_two_labels(data, tmp, "txt"), tmp / "out", "--dataset", "txt"), 1,
         r"DatasetError: \S*/train\.txt:31: '\S*' \(label 1\) is also on line 1 \(label 0\): .*keep one of the lines",
         check=lambda tmp: (_unchanged(tmp), _absent(tmp / "out"))),
    Case("train-refuses-a-zip-member-under-two-labels",
         lambda tmp, data: tiny_train(_one_file_two_labels(data, tmp, "zip"), tmp / "out", "--dataset", "zip"), 1,
         r"DatasetError: \S*/train_map\.txt:31: '\S*' \(label 1\) is also on line 1 \(label 0\)",
         check=lambda tmp: (_unchanged(tmp), _absent(tmp / "out"))),
    Case("evaluation-of-a-loose-checkpoint-writes-under-output", _loose(["--evaluation"]), 0, r"",
         check=lambda tmp: _unchanged(tmp, tmp / LOOSE_RUN / "eval_test" / "metrics.json",
                                      tmp / LOOSE_RUN / "log.txt")),
    Case("onnx-of-a-loose-checkpoint-writes-under-output", _loose(["--onnx"]), 0, r"",
         check=lambda tmp: _unchanged(tmp, tmp / LOOSE_RUN / "export" / "model.onnx")),
    Case("predict-of-a-loose-checkpoint-writes-under-output",
         lambda tmp, data: _loose(["--predict", str(data / "test")], "-v", "-s")(tmp, data), 0, r"",
         check=lambda tmp: _unchanged(tmp, tmp / LOOSE_RUN / "predict" / "test" / "predictions.log")),
    Case("visual-data-of-a-loose-checkpoint-writes-under-output",
         _loose(["--visual_data", "test"], "--visual_limit", "2"), 0, r"",
         check=lambda tmp: _unchanged(tmp, tmp / LOOSE_RUN / "visual")),
    Case("predict-again-leaves-the-earlier-prediction", _earlier_prediction, 0, r"", check=_second_prediction),
]


# ==== round three: exports and finished runs (#25 items 4, 5 and the demo) ====

_EXPORTS: dict[str, Path] = {}
_EXPORTS_HOME: list[Path] = []  # a folder that lives as long as this module's tests (set by the fixture below)


@pytest.fixture(autouse=True, scope="module")
def _exports_home(tmp_path_factory) -> None:
    """Where :func:`_export` makes its exports: not in a case's tmp_path, which pytest deletes when the case
    passes (pytest.ini), while later cases still copy from it."""
    _EXPORTS_HOME[:] = [tmp_path_factory.mktemp("made_exports")]
    _EXPORTS.clear()


def _export(tmp: Path, data: Path, mode: str, variant: str = "a") -> Path:
    """A copy in ``tmp/export`` of the export folder that ``main.py --MODE`` (its own process) writes for a
    16 px resnet18 of random weights (variant ``b``: its fc layer negated, so other weights of the same
    shapes); each is made once per session, in the module's exports folder."""
    key = f"{mode}-{variant}"
    if key not in _EXPORTS:
        import torch

        from helpers import calibrated_checkpoint
        from utils.checkpoint import save_checkpoint
        home = _EXPORTS_HOME[0] / key
        ckpt = calibrated_checkpoint(home / "run", "resnet18", data, TINY_SIZE)
        if variant == "b":
            state = torch.load(ckpt, weights_only=True)
            state["model"]["fc.weight"] = -state["model"]["fc.weight"]
            save_checkpoint(state, ckpt)
        r = subprocess.run([sys.executable, str(ROOT / "main.py"), f"--{mode}", "--resume", str(ckpt), "--data",
                            str(data), "-j", "0"], cwd=home, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr[-3000:]
        _EXPORTS[key] = ckpt.parent.parent / "export"
    return Path(shutil.copytree(_EXPORTS[key], tmp / "export", dirs_exist_ok=True))


def _ir_with_bin(tmp: Path, data: Path, how: str) -> list[str]:
    """The demo on an OpenVINO IR whose .bin is gone, cut short, or the .bin of another export (what a kill
    between the two renames of a re-export leaves: the new .xml beside the old .bin)."""
    export = _export(tmp, data, "openvino")
    weights = export / "model.bin"
    if how == "missing":
        weights.unlink()
    elif how == "short":
        weights.write_bytes(weights.read_bytes()[:weights.stat().st_size // 2])
    else:
        shutil.copyfile(_export(tmp / "b", data, "openvino", "b") / "model.xml", export / "model.xml")
    return [str(export / "model.xml"), str(data / "test")]


def _onnx_with_class_names(tmp: Path, data: Path, names: object) -> list[str]:
    """The demo on an ONNX export whose class_names metadata was edited to ``names``."""
    import onnx

    from export.core import set_onnx_metadata
    model = _export(tmp, data, "onnx") / "model.onnx"
    meta = {p.key: __import__("json").loads(p.value) for p in onnx.load(str(model)).metadata_props}
    set_onnx_metadata(model, {**meta, "class_names": names})
    return [str(model), str(data / "test")]


CASES += [
    Case("demo-openvino-bin-missing", lambda tmp, data: _ir_with_bin(tmp, data, "missing"), 1,
         r"OpenVINO cannot read the IR \S*model\.xml with its weights model\.bin: .*bin file cannot be found",
         script="demos/classifier.py"),
    Case("demo-openvino-bin-short", lambda tmp, data: _ir_with_bin(tmp, data, "short"), 1,
         r"OpenVINO cannot read the IR \S*model\.xml with its weights model\.bin: Incorrect weights in bin file",
         script="demos/classifier.py"),
    Case("demo-openvino-new-xml-old-bin", lambda tmp, data: _ir_with_bin(tmp, data, "other"), 1,
         r"\S*model\.bin is not the weights file of \S*model\.xml \(its sha256 is \w+\.\.\., the \.xml records "
         r"\w+\.\.\.\): an export was interrupted", script="demos/classifier.py"),
    Case("demo-class-names-fewer-than-outputs", lambda tmp, data: _onnx_with_class_names(tmp, data, ["0", "1"]), 1,
         r"model\.onnx: the model has 3 outputs per image but its class_names metadata names 2 classes",
         script="demos/classifier.py"),
    Case("demo-class-names-not-a-list", lambda tmp, data: _onnx_with_class_names(tmp, data, "017"), 1,
         r"model\.onnx: its class_names metadata is not a list of class names \(got str 017\)",
         script="demos/classifier.py"),
]


# ==== round three: run folders read by --compare and --config values (#25 item 6) ====

_GOOD_RUN = {"config.yaml": "arch: resnet18\nepochs: 1\nlr: 0.1\ntag: good\n",
             "metrics.json": '{"history": [{"epoch": 0, "val_top1": 50.0, "train_loss": 1.0}], '
                             '"test": {"test_top1": 48.0}}'}


def _compare_good_and(bad: dict[str, str | bytes | None], good: bool = True) -> Callable[[Path, Path], list[str]]:
    """``--compare runs/`` over ``runs/good`` (unless ``good`` is False) and ``runs/bad``, whose files are
    the good run's but for ``bad`` (file name -> text or bytes; None: a link to itself)."""
    def setup(tmp: Path, data: Path) -> list[str]:
        for name, files in {"bad": {**_GOOD_RUN, **bad}, **({"good": _GOOD_RUN} if good else {})}.items():
            (tmp / "runs" / name).mkdir(parents=True)
            for file, content in files.items():
                if content is None:
                    (tmp / "runs" / name / file).symlink_to(file)
                else:
                    write_text_or_bytes(tmp / "runs" / name / file, content)
        return ["--compare", str(tmp / "runs")]
    return setup


def _compared_the_good_run_only(tmp: Path) -> None:
    table = (tmp / "runs" / "compare.md").read_text()
    assert "| good " in table and "| bad " not in table, table


def _config_yaml(text: str) -> Callable[[Path, Path], list[str]]:
    def setup(tmp: Path, data: Path) -> list[str]:
        (tmp / "c.yaml").write_text(text)
        return tiny_train(data, tmp / "out", "--config", str(tmp / "c.yaml"))
    return setup


CASES += [
    Case("compare-nul-byte-config", _compare_good_and({"config.yaml": b"arch: resnet18\x00\n"}), 0,
         r"WARNING .*--compare: skipped a run: .*runs/bad/config\.yaml: position 14: unacceptable character #x0000 "
         r"\(control characters are not allowed\); fix or delete that file", check=_compared_the_good_run_only),
    Case("compare-list-config", _compare_good_and({"config.yaml": "- a\n- b\n"}), 0,
         r"skipped a run: .*runs/bad/config\.yaml: it holds a list, not a mapping of flags",
         check=_compared_the_good_run_only),
    Case("compare-self-linked-config", _compare_good_and({"config.yaml": None}), 0,
         r"skipped a run: .*runs/bad/config\.yaml: it cannot be read \(Too many levels of symbolic links\)",
         check=_compared_the_good_run_only),
    Case("compare-list-metrics", _compare_good_and({"metrics.json": "[1, 2]"}), 0,
         r"skipped a run: .*runs/bad/metrics\.json: it holds a list, not a mapping with the run's history",
         check=_compared_the_good_run_only),
    Case("compare-history-row-without-epoch", _compare_good_and({"metrics.json": '{"history": [{"val_top1": 5}]}'}),
         0, r"skipped a run: .*runs/bad/metrics\.json: history row 1 has no epoch;", check=_compared_the_good_run_only),
    Case("compare-string-val-top1",
         _compare_good_and({"metrics.json": '{"history": [{"epoch": 0, "val_top1": "n/a"}]}'}), 0,
         r"skipped a run: .*runs/bad/metrics\.json: history row 1: val_top1 is 'n/a', not a number",
         check=_compared_the_good_run_only),
    Case("compare-no-readable-run", _compare_good_and({"metrics.json": "[1, 2]"}, good=False), 1,
         r"ERROR .*--compare: .*runs/bad/metrics\.json: it holds a list, not a mapping with the run's history; "
         r"fix or delete that file$"),
    Case("config-lr-null", _config_yaml("lr: null\n"), 2,
         r"c\.yaml: key 'lr' \(flag --lr\) has invalid value None: expected a number, or leave the key out for the "
         r"default \(0\.1\)", check=nothing_written),
    Case("config-epochs-not-an-integer", _config_yaml('epochs: "ten"\n'), 2,
         r"c\.yaml: key 'epochs' \(flag --epochs\) has invalid value 'ten': expected an integer",
         check=nothing_written),
]


# ==== csv and jsonl label tables (#28 item 1) ====

def _csv_with(data: Path, tmp: Path, split: str, line: int, text: str) -> Path:
    """The data as csv tables (``utils/make_digits.py --csv``'s writer), line ``line`` of ``split``.csv
    replaced by ``text``."""
    from dataloader.layout_writers import write_csv_tables
    root = write_csv_tables(data, tmp / "csv")
    lines = (root / f"{split}.csv").read_text().splitlines()
    lines[line - 1] = text
    (root / f"{split}.csv").write_text("\n".join(lines) + "\n")
    return root


def tiny_csv(root: Path, tmp: Path, *extra: str) -> list[str]:
    return tiny_train(root, tmp / "out", "--dataset", "csv", *extra)


CASES += [
    Case("csv-malformed-row", lambda tmp, data: tiny_csv(_csv_with(data, tmp, "train", 3, "a.png,0,extra"), tmp), 1,
         r"DatasetError: \S*csv/train\.csv:3: malformed row: 3 fields where the header has 2 \(quote a value that "
         r"holds a comma", check=_no_run_started),
    Case("csv-class-train-lacks", lambda tmp, data: tiny_csv(_csv_with(data, tmp, "val", 2, "../x.png,9"), tmp), 1,
         r"\S*csv/val\.csv:2: label '9' is not in \S*classes\.txt \(a class name, or an integer 0\.\.2\)"),
    Case("csv-missing-image", lambda tmp, data: tiny_csv(_csv_with(data, tmp, "train", 2, "gone.png,1"), tmp), 1,
         r"\S*csv/train\.csv:2: image '\S*csv/gone\.png' does not exist \(relative paths resolve against"),
    Case("csv-missing-column", lambda tmp, data: tiny_csv(_csv_with(data, tmp, "train", 1, "file,label"), tmp), 1,
         r"\S*csv/train\.csv:1: no column 'path' in the header \(found: file, label\); name the columns with "
         r"--path_col and --label_col$"),
    Case("csv-columns-without-dataset-csv", lambda tmp, data: tiny_train(data, tmp / "out", "--label_col", "cls"), 2,
         r"--label_col names a column of a --dataset csv or hf dataset, but --dataset is folder"),
    Case("check-images-csv-malformed-row",
         lambda tmp, data: [str(_csv_with(data, tmp, "val", 2, "only-a-path.png")), "--no_progress"], 1, r"^$",
         script="utils/check_images.py"),
]


# ==== Hugging Face datasets: save_to_disk folders, Hub-layout parquet, Hub names (#28 item 4) ====

def _hf_data(data: Path, tmp: Path, column: str = "image", label: int | None = None, broken: bool = False,
             parquet: bool = False) -> Path:
    """The train and val splits of the folders written with the ``datasets`` library (``column`` holding the
    images): val's first label replaced by ``label``, train's first image by bytes that are no image."""
    from datasets import ClassLabel, Dataset, DatasetDict, Features, Image
    names = sorted(p.name for p in (data / "train").iterdir())
    splits = {}
    for split, name in (("train", "train"), ("val", "validation")):
        files = sorted((data / split).glob("*/*.png"))
        images = [{"bytes": f.read_bytes(), "path": None} for f in files]
        labels = [names.index(f.parent.name) for f in files]
        if split == "train" and broken:
            images[0] = {"bytes": b"not an image", "path": None}
        if split == "val" and label is not None:
            labels[0] = label
        splits[name] = Dataset.from_dict({column: images, "label": labels},
                                         features=Features({column: Image(), "label": ClassLabel(names=names)}))
    root = tmp / "hf"
    if not parquet:
        DatasetDict(splits).save_to_disk(str(root))
        return root
    for name, split in splits.items():
        (root / "data").mkdir(parents=True, exist_ok=True)
        split.to_parquet(str(root / "data" / f"{name}-00000-of-00001.parquet"))
    return root


def tiny_hf(root: Path | str, tmp: Path, *extra: str) -> list[str]:
    return tiny_train(root, tmp / "out", "--dataset", "hf", *extra)


CASES += [
    Case("hf-parquet-without-image-column",
         lambda tmp, data: tiny_hf(_hf_data(data, tmp, column="picture", parquet=True), tmp), 1,
         r"DatasetError: \S*hf \(train split\): no image column \('image' or 'img'\); its columns are picture, label: "
         r"name the image column with --image_col$", check=_no_run_started),
    Case("hf-label-out-of-classlabel-range",
         lambda tmp, data: tiny_hf(_hf_data(data, tmp, label=-1), tmp), 1,  # -1: a ClassLabel's "no label"
         r"DatasetError: \S*hf \(val split\) row 0: label -1 is out of range: there are 3 classes \(labels 0\.\.2; "
         r"-1 is the datasets library's 'no label'\)"),
    Case("hf-undecodable-row", lambda tmp, data: tiny_hf(_hf_data(data, tmp, broken=True), tmp), 1,
         r"\S*hf \(train split\) row 0: .*--skip_bad_images"),
    Case("hf-hub-name-not-cached", lambda tmp, data: tiny_hf("someone/not-cached", tmp), 1,
         r"DatasetError: Hugging Face dataset .someone/not-cached. is not in the datasets cache \S*hf_datasets and "
         r"this project never downloads data", check=_no_run_started),
    Case("check-images-hf-undecodable-row",
         lambda tmp, data: [str(_hf_data(data, tmp, broken=True)), "--no_progress"], 1, r"^$",
         script="utils/check_images.py"),
]



# ==== multi-label (--multi_label) ====

def _label_sets(data: Path, tmp: Path, edit: Callable[[str, list[str]], None] | None = None, sets: bool = True) -> Path:
    """The tiny data as csv tables whose labels are sets (``"a b"``: every other image gets its class and the
    next one, the rest their class alone), ``edit(split, rows)`` applied to each split's data rows."""
    from dataloader.layout_writers import write_csv_tables
    root = write_csv_tables(data, tmp / "csv")
    (root / "classes.txt").unlink()
    names = sorted(p.name for p in (data / "train").iterdir())
    for split in ("train", "val", "test"):
        header, *rows = (root / f"{split}.csv").read_text().splitlines()
        rows = [f"{path},{label} {names[(names.index(label) + 1) % len(names)]}" if k % 2 == 0 else f"{path},{label}"
                for k, (path, label) in enumerate(row.rsplit(",", 1) for row in rows)] if sets else rows
        if edit is not None:
            edit(split, rows)
        (root / f"{split}.csv").write_text("\n".join([header, *rows]) + "\n")
    return root


def _unknown_in_val(split: str, rows: list[str]) -> None:
    if split == "val":
        rows[1] = rows[1].rsplit(",", 1)[0] + f",{rows[1].rsplit(',', 1)[1].split()[0]} zebra"


def _empty_in_train(split: str, rows: list[str]) -> None:
    if split == "train":
        rows[2] = rows[2].rsplit(",", 1)[0] + ","


def ml_train(tmp: Path, data: Path, edit=None, *extra: str) -> list[str]:
    return tiny_train(_label_sets(data, tmp, edit), tmp / "out", "--dataset", "csv", "--multi_label", *extra)


CASES += [
    Case("ml-label-set-names-an-unknown-class", lambda tmp, data: ml_train(tmp, data, _unknown_in_val), 1,
         r"val\.csv:3: label 'zebra' is not a training class \(training classes: \S+"),
    Case("ml-empty-label-without-allow-empty-labels", lambda tmp, data: ml_train(tmp, data, _empty_in_train), 1,
         r"train\.csv:4: no label: with --multi_label an image without labels is all negative only where you say so "
         r"\(--allow_empty_labels\)", check=_no_run_started),
    Case("ml-empty-label-allowed", lambda tmp, data: ml_train(tmp, data, _empty_in_train, "--allow_empty_labels"),
         0, r""),
    Case("empty-label-with-multi-label-off",
         lambda tmp, data: tiny_train(_label_sets(data, tmp, _empty_in_train, sets=False), tmp / "out", "--dataset",
                                      "csv"), 1,
         r"train\.csv:4: malformed row: empty 'label'"),
    Case("ml-with-class-balanced", lambda tmp, data: ml_train(tmp, data, None, "--class_balanced"), 2,
         r"--class_balanced with --multi_label: class-balanced sampling weighs each image by its one class's "
         r"frequency", check=_no_run_started),
    Case("ml-with-label-smoothing", lambda tmp, data: ml_train(tmp, data, None, "--label_smoothing", "0.1"), 2,
         r"--label_smoothing with --multi_label: label smoothing spreads one class's mass", check=_no_run_started),
    Case("ml-with-criterion-softmax", lambda tmp, data: ml_train(tmp, data, None, "--criterion", "softmax"), 2,
         r"--multi_label with --criterion softmax: a softmax gives one class per image", check=_no_run_started),
    Case("ml-asl-with-focal-loss", lambda tmp, data: ml_train(tmp, data, None, "--criterion", "asl", "--focal_loss"),
         2, r"--focal_loss with --criterion asl: the asymmetric loss focuses already", check=_no_run_started),
    Case("asl-setting-without-asl", lambda tmp, data: ml_train(tmp, data, None, "--asl_clip", "0.1"), 2,
         r"--asl_clip: a setting of the asymmetric loss, but --criterion is bce: add --criterion asl, or drop it",
         check=_no_run_started),
    Case("ml-with-class-folders", lambda tmp, data: tiny_train(data, tmp / "out", "--multi_label"), 2,
         r"--multi_label with --dataset folder: a class folder gives each image exactly one class"),
    Case("tune-thresholds-without-multi-label", lambda tmp, data: tiny_train(data, tmp / "out", "--tune_thresholds"),
         2, r"--tune_thresholds picks per-class decision thresholds of a --multi_label model; add --multi_label"),
]

# main.py cases that stay real processes: an argparse error and a mode's error as exit codes of a process,
# a run directory locked by another process (this one holds the lock), and the hf cases (the datasets
# library reads HF_DATASETS_CACHE once, when it is first imported).
REAL_PROCESS = {"flag-of-another-mode", "unknown-arch", "run-dir-locked"}


def runs_as_process(case: Case) -> bool:
    return case.script != "main.py" or case.id in REAL_PROCESS or case.id.startswith("hf-")


def main_in_process(args: list[str], capsys) -> subprocess.CompletedProcess:
    """``main.main(args)`` in this process (cwd and environment already set): its exit code and output."""
    import main
    capsys.readouterr()
    try:
        code = main.main(args)
    except SystemExit as e:  # argparse's errors, as the interpreter turns them into an exit code
        code = 0 if e.code is None else e.code if isinstance(e.code, int) else 1
    out, err = capsys.readouterr()
    return subprocess.CompletedProcess(["main.py", *args], code, out, err)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case: Case, tiny_data, tmp_path, monkeypatch, capsys):
    args = case.setup(tmp_path, tiny_data["folder"])
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf_datasets"))  # --dataset hf: an empty cache of its own
    if runs_as_process(case):
        r = subprocess.run([sys.executable, str(ROOT / case.script), *args], cwd=tmp_path, capture_output=True,
                           text=True, timeout=300, env=dict(os.environ))
    else:
        monkeypatch.chdir(tmp_path)
        r = main_in_process(args, capsys)
    assert r.returncode == case.code, (r.returncode, r.stderr[-3000:])
    assert "Traceback" not in r.stderr, r.stderr[-3000:]
    line = first_error_line(r.stderr)
    assert re.search(case.first_line, line), (line, r.stderr[-3000:])
    if case.check is not None:
        case.check(tmp_path)


def test_cases_have_unique_ids():
    ids = [c.id for c in CASES]
    assert len(ids) == len(set(ids))
