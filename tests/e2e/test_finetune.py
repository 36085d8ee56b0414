"""Fine-tuning: weights by name from each library's cache (no network, ever), preprocessing that follows
the weights, the offline message, a frozen backbone, per-group LRs, precise batch-norm statistics."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys

import torch
import yaml

from helpers import ROOT, fake_weights, put_in_cache, run_main, tiny_train_args


def test_offline_miss_stops_before_any_work(tiny_data, tmp_path):
    env = {**os.environ, "TORCH_HOME": str(tmp_path / "torch"), "HF_HUB_OFFLINE": "1"}
    args = tiny_train_args(tiny_data["folder"], tmp_path / "out", "--pretrained", "imagenet")
    r = subprocess.run([sys.executable, str(ROOT / "main.py"), *args], cwd=tmp_path, env=env, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert "download https://download.pytorch.org/models/resnet18-f37072fd.pth and put it at " + \
        str(tmp_path / "torch/hub/checkpoints/resnet18-f37072fd.pth") in r.stderr
    assert not (tmp_path / "out").exists()  # no run directory, no log: nothing started


def test_preprocessing_follows_the_weights_unless_set(tiny_data, tmp_path, caches):
    put_in_cache("timm/test_resnet", caches)  # mean/std 0.5, bilinear, crop 0.95
    out = tmp_path / "out"
    assert run_main(tiny_train_args(tiny_data["folder"], out, "--arch", "timm/test_resnet", "--pretrained",
                                    "imagenet", "--epochs", "1")) == 0
    run = out / "timm-test_resnet" / "default"
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    assert (cfg["mean"], cfg["std"], cfg["eval_resize"], cfg["crop_pct"]) == ([0.5] * 3, [0.5] * 3, "center_crop", 0.95)
    ckpt = torch.load(run / "checkpoints" / "last.pth", weights_only=True)
    assert ckpt["config"]["mean"] == [0.5] * 3 and ckpt["config"]["crop_pct"] == 0.95
    # where the weights and their preprocessing came from is in the run's own log, once (console only before)
    log = (run / "log.txt").read_text()
    assert log.count(": cached at ") == 1
    assert "mean = [0.5, 0.5, 0.5] from timm pretrained_cfg of test_resnet" in log
    # a flag the user sets wins over the weights' own
    assert run_main(tiny_train_args(tiny_data["folder"], out, "--arch", "timm/test_resnet", "--pretrained",
                                    "imagenet", "--epochs", "1", "--mean", "0.4", "0.4", "0.4", "--tag", "own")) == 0
    cfg = yaml.safe_load((out / "timm-test_resnet" / "own" / "config.yaml").read_text())
    assert cfg["mean"] == [0.4] * 3 and cfg["std"] == [0.5] * 3


def _backbone(state: dict[str, torch.Tensor], head: set[str]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in state.items() if k not in head}


def test_freeze_backbone_then_unfreeze_and_resume_exactly(tiny_data, tmp_path):
    """Epoch 0 frozen (backbone weights and BN statistics bit-identical to the file, --precise_bn too),
    epoch 1 trains every layer; a run resumed from the epoch-0 checkpoint ends exactly as the straight one."""
    from utils.checkpoint import previous_path
    pretrained = tmp_path / "resnet18_imagenet.pth"
    torch.save(fake_weights("resnet18"), pretrained)
    start = torch.load(pretrained, weights_only=True)
    head = {"fc.weight", "fc.bias"}
    flags = ["--pretrained", str(pretrained), "--freeze_backbone", "--unfreeze_epoch", "1", "--precise_bn", "2",
             "--lr", "0.01"]
    assert run_main(tiny_train_args(tiny_data["folder"], tmp_path, *flags, "--tag", "full")) == 0
    full = tmp_path / "resnet18/full"
    after0 = torch.load(previous_path(full / "checkpoints/last.pth"), weights_only=True)
    assert after0["epoch"] == 0
    for k, v in _backbone(start, head).items():
        assert torch.equal(after0["model"][k], v), k
    assert not torch.equal(after0["model"]["fc.weight"],
                           torch.load(full / "checkpoints/last.pth")["model"]["fc.weight"])
    after1 = torch.load(full / "checkpoints/last.pth", weights_only=True)["model"]
    assert not torch.equal(after1["conv1.weight"], start["conv1.weight"])
    assert not torch.equal(after1["bn1.running_mean"], start["bn1.running_mean"])
    # resumed from the frozen epoch's checkpoint: unfreezes at epoch 1 and ends bit-identical
    part = tmp_path / "resnet18/part"
    (part / "checkpoints").mkdir(parents=True)
    shutil.copy(full / "config.yaml", part / "config.yaml")
    shutil.copy(previous_path(full / "checkpoints/last.pth"), part / "checkpoints/last.pth")
    assert run_main(tiny_train_args(tiny_data["folder"], tmp_path, *flags, "--tag", "part")) == 0
    resumed = torch.load(part / "checkpoints/last.pth", weights_only=True)["model"]
    for k, v in after1.items():
        assert torch.equal(resumed[k], v), k
