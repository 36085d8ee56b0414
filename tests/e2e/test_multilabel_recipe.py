"""The multi-label recipe (``z_task_shell/configs/mosaic_multilabel.yaml``) on the bundled digit mosaics: its mAP.

The recipe runs 4 epochs in the docs (test mAP 99.66, 99.48, 99.63 % for seeds 0-2, 211 s for seed 0 on a
2-core AMD EPYC); here 2 epochs of the same recipe (its warm-up epoch, then one cosine epoch) keep the suite
short: about 110 s a training there. Measured on that CPU (AVX2, no AVX-512, where ``ONEDNN_MAX_CPU_ISA=AVX2``
takes the same kernels), 2 epochs gave test mAP 97.76, 97.80, 97.42 % for seeds 0, 1, 2; the bound keeps a
margin of 3.4 points under the worst for other CPUs' kernels (the top-1 of the single-label recipe moved by up to
2.2 points between kernel paths; mAP, a ranking measure over 800 images and 10 classes, moves less). The
issue's mark, mAP >= 95 % within 5 minutes, is the 4-epoch recipe's (docs/multilabel.md).
"""
from __future__ import annotations

import pytest

from config import read_config_file
from dataloader.digits import make_mosaic
from helpers import ROOT, read_json, run_main

RECIPE = ROOT / "z_task_shell/configs/mosaic_multilabel.yaml"
EPOCHS = 2
MIN_MAP = 94.0


@pytest.mark.slow
def test_mosaic_recipe_reaches_its_map(tmp_path):
    recipe = read_config_file(RECIPE)
    assert recipe["multi_label"] is True and recipe["tune_thresholds"] is True and recipe["epochs"] == 4
    data = make_mosaic(ROOT / "data" / "digits_mosaic")
    assert run_main(["--train", "--config", str(RECIPE), "--data", str(data), "--epochs", str(EPOCHS),
                     "--output", str(tmp_path), "--no_progress"]) == 0
    run = tmp_path / "resnet18" / "mosaic_multilabel"
    test = read_json(run / "metrics.json")["test"]
    assert test["test_map"] >= MIN_MAP, test
    report = read_json(run / "eval_test" / "metrics.json")
    assert report["count"] == 800 and len(report["thresholds"]) == 10 and report["thresholds"] != [0.5] * 10
    assert report["map"] == test["test_map"]
