"""``--train --use_test_size`` from timm weights that define a test size (``resnet10t.c3_in1k``: trained at
176x176, crop_pct 0.875; tested at 224x224, crop_pct 0.95): the checkpoint records it, the final test, a
later ``--evaluation``/``--predict`` and a ``--jit`` export use it. No network: the weights are a fake file in
a temporary cache (tests/unit/test_finetune.py)."""
from __future__ import annotations

import torch

from export.core import load_torchscript
from helpers import put_in_cache, read_json, run_main, tiny_train_args

ARCH = "timm/resnet10t"


def test_train_records_and_tests_at_the_weights_test_size(tiny_data, tmp_path, caches, caplog):
    put_in_cache(ARCH, caches)
    data, out = tiny_data["folder"], tmp_path / "out"
    assert run_main(tiny_train_args(data, out, "--arch", ARCH, "--pretrained", "imagenet", "--epochs", "1",
                                    "--image_size", "176", "176", "--device", "cpu", "--use_test_size")) == 0
    run = out / "timm-resnet10t" / "default"
    spec = torch.load(run / "checkpoints" / "best.pth", weights_only=True)["model_spec"]
    assert (spec["image_size"], spec["crop_pct"]) == ([176, 176], 0.875)  # the weights' own, trained at
    assert (spec["test_image_size"], spec["test_crop_pct"]) == ([224, 224], 0.95)
    assert "test size 224x224, crop_pct 0.95 from timm pretrained_cfg of resnet10t.c3_in1k" in caplog.text
    assert read_json(run / "eval_test" / "metrics.json")["input"] == {
        "image_size": [224, 224], "eval_resize": "center_crop", "crop_pct": 0.95, "interpolation": "bicubic",
        "test_size": True}
    assert "final test: best.pth on the test split (12 images) at 224x224" in caplog.text

    # the checkpoint knows it: predictions and a TorchScript export at the test size
    best = str(run / "checkpoints" / "best.pth")
    assert run_main(["--predict", str(data / "test"), "--resume", best, "-j", "0", "--no_progress", "--device",
                     "cpu", "--use_test_size"]) == 0
    assert "--use_test_size: evaluating at 224x224, crop_pct 0.95" in caplog.text
    assert run_main(["--jit", "--resume", best, "-j", "0", "--no_progress", "--use_test_size"]) == 0
    _, meta = load_torchscript(run / "export" / "model_jit.pt", optimize=False)
    assert (meta["image_size"], meta["crop_pct"], meta["test_image_size"]) == ([224, 224], 0.95, [224, 224])
