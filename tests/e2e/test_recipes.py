"""z_task_shell/: every recipe runs in smoke mode (SMOKE=1: the digits cut to 4 images per class and
split, 16x16, 1 epoch), with its real flags, in a real bash process; each leaves what it promises."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from helpers import ROOT, read_json

SHELL = ROOT / "z_task_shell"
BASELINE = "resnet18/baseline/checkpoints/best.pth"

pytestmark = pytest.mark.slow


def run_recipe(script: str, output: Path, *args: str, smoke: bool = True, timeout: int = 600,
               **env: str) -> subprocess.CompletedProcess:
    # torch threads: the test command's (one per pytest worker), else two
    environ = {**os.environ, "OUTPUT": str(output), "SMOKE": "1" if smoke else "0",
               "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2"), **env}
    r = subprocess.run(["bash", str(SHELL / script), *args], cwd=ROOT, env=environ, capture_output=True, text=True,
                       timeout=timeout)
    if smoke:
        assert r.returncode == 0, f"{script} failed ({r.returncode}):\n{r.stderr[-4000:]}"
    return r


@pytest.fixture(scope="module")
def smoke_output(tmp_path_factory) -> Path:
    """One output folder for the recipes, with the smoke baseline the later recipes start from."""
    output = tmp_path_factory.mktemp("recipes")
    run_recipe("1_train_baseline.sh", output)
    return output


def test_baseline_recipe(smoke_output):
    run = smoke_output / "resnet18/baseline"
    test = read_json(run / "metrics.json")["test"]
    assert test["test_split"] == "test" and (run / "checkpoints/best.pth").is_file()
    config = (run / "config.yaml").read_text()
    assert "criterion: softmax" in config and "scheduler: cosine" in config and "smoke_digits" in config


def test_lr_range_test_prints_the_suggestion(smoke_output):
    r = run_recipe("0_check_best_lr.sh", smoke_output)
    assert "suggested LR" in r.stdout and (smoke_output / "resnet18/lr_finder/lr_finder.png").is_file()


def test_strategies_sweep_table_has_a_finished_row_per_variant(smoke_output):
    """The recipe is a sweep: one run per variant of its file, then the --compare table of them all;
    rerunning it runs nothing. Three of its variants (a softmax, a BCE + GHM and a batch-mixing one; every
    variant trains an epoch in tests/unit/test_sweep_variants.py) go two at a time on two CPU slots of one
    thread each: a recipe's trailing flags reach main.py."""
    import yaml
    variants = ["baseline", "bce_ghm", "mixup_cutmix"]
    assert set(variants) <= set(yaml.safe_load((SHELL / "configs/strategies.yaml").read_text())["variants"])
    only = ("--sweep_only", *variants)
    r = run_recipe("2_train_with_strategies.sh", smoke_output, "", "--sweep_devices", "cpu,cpu", *only,
                   timeout=1200, OMP_NUM_THREADS="1")
    rows = [[c.strip() for c in line.split("|")[1:-1]] for line in r.stdout.splitlines() if line.startswith("| ")]
    header, rows = rows[0], rows[1:]
    assert header[0] == "run" and header[-1] == "status" and "test top-1" in header
    assert sorted(row[0] for row in rows) == sorted(variants) and all(row[-1] == "finished" for row in rows)
    assert sorted(p.name for p in (smoke_output / "strategies/resnet18").iterdir()) == sorted(variants)
    assert (smoke_output / "strategies/compare.md").read_text().count("| finished") == len(variants)
    again = run_recipe("2_train_with_strategies.sh", smoke_output, "", *only)
    assert f'"skipped": {len(variants)}' in again.stdout and '"ran": 0' in again.stdout


def test_evaluate_recipe(smoke_output):
    run_recipe("3_evaluate.sh", smoke_output)
    out = smoke_output / "resnet18/baseline/eval_test"
    assert read_json(out / "metrics.json")["count"] == 40  # the smoke data's test split, from the checkpoint
    assert {"confusion_matrix.png", "predictions.json"} <= {p.name for p in out.iterdir()}


def test_distill_recipe(smoke_output):
    r = run_recipe("4_distill.sh", smoke_output)
    assert (smoke_output / "smoke_digits/distill_resnet50.txt").is_file()
    assert "distill" in (smoke_output / "resnet18/student/config.yaml").read_text()
    assert "resnet50/teacher: test top-1" in r.stdout and "resnet18/student: test top-1" in r.stdout
    # the online route: the teacher's checkpoint in the student's config, its share of the step time printed
    assert "teacher: " in (smoke_output / "resnet18/student_online/config.yaml").read_text()
    assert re.search(r"resnet18/student_online: test top-1 [\d.]+, [\d.]+ s/epoch, teacher \d+% of step time",
                     r.stdout), r.stdout


def test_curriculum_recipe(smoke_output):
    run_recipe("5_curriculum.sh", smoke_output)
    weights = (smoke_output / "smoke_digits/curriculum.txt").read_text().splitlines()
    assert len(weights) == 40 and {float(line.rsplit(",", 1)[1]) for line in weights} <= {1.0, 0.7, 0.4}
    assert "curriculum_learning: true" in (smoke_output / "resnet18/curriculum/config.yaml").read_text()


def test_visualize_recipe(smoke_output):
    run_recipe("6_visualize.sh", smoke_output)
    for method in ("cam", "grad-cam", "grad-cam++"):
        assert (smoke_output / f"resnet18/baseline/visual/{method}/test/gallery.png").is_file()


def test_export_and_demo_recipe(smoke_output):
    r = run_recipe("7_export_and_demo.sh", smoke_output)
    export = smoke_output / "resnet18/baseline/export"
    assert (export / "model_jit.pt").is_file() and (export / "model.onnx").is_file()
    log = r.stdout + r.stderr
    assert "classified with model_jit.pt (torchscript)" in log and "classified with model.onnx (onnxruntime)" in log
    assert log.count("smoke_digits/test/3/") >= 8  # each backend printed a line per image of the folder


def test_predict_folder_recipe(smoke_output):
    run_recipe("8_predict_folder.sh", smoke_output)
    predict = smoke_output / "resnet18/baseline/predict/test"  # a folder per run, named after the source
    assert len((predict / "predictions.csv").read_text().splitlines()) == 41  # header + the 40 test images
    assert len(list((predict / "images").rglob("*.png"))) == 40 and (predict / "predictions.log").is_file()


@pytest.mark.parametrize("script, run, expect", [
    ("resnext50_32x4d_imagenet.sh", "resnext50_32x4d/imagenet_zip",
     ["label_smoothing: 0.1", "amp: true", "lr_scale: linear", "dataset: zip", "clip_grad: 1.0"]),
    ("resnext101_64x4d_imagenet.sh", "resnext101_64x4d/imagenet",
     ["lr_base_batch: 64", "scheduler: cosine", "rrc_scale:\n- 0.08"]),
    ("resnest50_imagenet.sh", "resnest50/imagenet_8dev", ["mixup: 0.2", "amp: true"]),
    ("resnet50_b256_imagenet.sh", "resnet50/b256", ["scheduler: multistep", "- 30"]),
    ("efficientnet_b0_finetune.sh", "efficientnet-b0/finetune", ["pretrained: imagenet", "eval_resize: center_crop",
                                                                 "crop_pct: 0.875"]),
    ("finetune_pretrained.sh", "resnet18/finetune_pretrained", ["pretrained: imagenet", "freeze_backbone: true",
                                                                "unfreeze_epoch: 1", "head_lr_mult: 10.0",
                                                                "eval_resize: center_crop"]),
    ("quickstart_digits.sh", "resnet18/digits_baseline", ["cache_dataset: memory", "channels_last: true"]),
    ("mosaic_multilabel.sh", "resnet18/mosaic_multilabel", ["multi_label: true", "tune_thresholds: true",
                                                            "dataset: csv", "criterion: bce"]),
])
def test_training_recipes(smoke_output, script, run, expect, tmp_path, monkeypatch):
    """The ImageNet recipes (one process under SMOKE=1), the fine-tunes and the quickstart: their flags are
    accepted and land in the run's resolved config (the smoke overrides on top). The ResNeXt-50 recipe
    runs its ZIP=1 variant (the same flags, read from zip archives); the fine-tunes take --pretrained
    imagenet from a temporary TORCH_HOME holding the file torchvision / efficientnet-pytorch read, offline."""
    env = {"ZIP": "1"} if "_zip" in run else {}
    if "finetune" in run:
        from helpers import put_in_cache
        env.update(TORCH_HOME=str(tmp_path / "torch"), HF_HUB_OFFLINE="1")
        monkeypatch.setenv("TORCH_HOME", env["TORCH_HOME"])
        put_in_cache(run.split("/")[0], tmp_path)
    run_recipe(script, smoke_output, **env)
    config = (smoke_output / run / "config.yaml").read_text()
    assert all(e in config for e in expect), config
    assert "image_size:\n- " in config and read_json(smoke_output / run / "metrics.json")["test"]
    shutil.rmtree(smoke_output / run / "checkpoints")  # up to 650 MB each: keep the test's disk use small


def test_distributed_launch_recipes(smoke_output):
    r = run_recipe("torchrun_multinode.sh", smoke_output, "z_task_shell/configs/digits_resnet18.yaml",
                   "--tag", "multinode")
    assert "torch.distributed.run --nnodes=1 --node_rank=0" in r.stderr
    assert read_json(smoke_output / "resnet18/multinode/metrics.json")["test"]
    run_recipe("slurm_train.sh", smoke_output, "partition", "job", "z_task_shell/configs/digits_resnet18.yaml",
               str(smoke_output / "slurm"))
    assert read_json(smoke_output / "slurm/resnet18/digits_baseline/metrics.json")["test"]


def test_recipes_refuse_missing_inputs_clearly(tmp_path):
    r = run_recipe("efficientnet_b0_finetune.sh", tmp_path, str(tmp_path / "none.pth"), smoke=False)
    assert r.returncode == 2 and "weights file" in r.stderr and "none.pth' does not exist" in r.stderr
    r = run_recipe("3_evaluate.sh", tmp_path, str(tmp_path / "none.pth"), smoke=False)
    assert r.returncode == 2 and "does not exist; train one first" in r.stderr
