"""The README's main job, end to end on the bundled digits: the accuracy the README promises."""
from __future__ import annotations

import pytest

from conftest import ROOT, read_json, run_main
from utils.make_digits import make_digits


@pytest.mark.slow
def test_quickstart_recipe_reaches_97_percent(tmp_path):
    make_digits(ROOT / "data" / "digits")
    assert run_main(["--train", "--config", str(ROOT / "z_task_shell/configs/digits_resnet18.yaml"),
                     "--data", str(ROOT / "data" / "digits"), "--output", str(tmp_path), "--no_progress"]) == 0
    run = tmp_path / "resnet18" / "digits_baseline"
    test = read_json(run / "metrics.json")["test"]
    assert test["test_top1"] >= 97.0
    assert run_main(["--evaluation", "--resume", str(run / "checkpoints/best.pth"), "--data",
                     str(ROOT / "data" / "digits"), "--no_progress"]) == 0
    assert read_json(run / "eval_test/metrics.json")["top1"] == test["test_top1"]
