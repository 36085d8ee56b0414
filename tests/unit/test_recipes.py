"""z_task_shell/: every recipe script has a smoke run in tests/e2e/test_recipes.py and a header comment."""
from __future__ import annotations

from helpers import ROOT

SHELL = ROOT / "z_task_shell"
NOT_RECIPES = {"common.sh", "install.sh", "install_browser.sh", "run_tests.sh"}


def test_every_script_is_covered():
    scripts = {p.name for p in SHELL.glob("*.sh")} - NOT_RECIPES
    covered = {"0_check_best_lr.sh", "1_train_baseline.sh", "2_train_with_strategies.sh", "3_evaluate.sh",
               "4_distill.sh", "5_curriculum.sh", "6_visualize.sh", "7_export_and_demo.sh", "8_predict_folder.sh",
               "quickstart_digits.sh", "resnext50_32x4d_imagenet.sh", "resnext101_64x4d_imagenet.sh",
               "resnest50_imagenet.sh", "resnet50_b256_imagenet.sh", "efficientnet_b0_finetune.sh",
               "finetune_pretrained.sh", "mosaic_multilabel.sh",
               "slurm_train.sh", "torchrun_multinode.sh"}
    assert scripts == covered
    for p in SHELL.glob("*.sh"):  # each starts with a header comment saying what it does
        lines = p.read_text().splitlines()
        assert lines[0] == "#!/usr/bin/env bash" or p.name == "common.sh", p.name
        assert lines[1].startswith("# ") and len(lines[1]) > 20, p.name
