"""The pretrained weights' interpolation (bicubic for torchvision's and timm's EfficientNets) is
applied, not only logged: the run's config, its checkpoint, the export metadata, the evaluation resize
and the demo's resize all use it, unless ``--interpolation`` is set. No network: the weights are a fake
file in a temporary cache (see tests/unit/test_finetune.py)."""
from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import torch
import yaml
from torchvision.transforms import InterpolationMode, v2
from torchvision.transforms.v2 import functional as F

from applications.setup.common import build_dataset
from dataloader.cache import BatchAugment
from dataloader.io import decode_rgb
from export.core import export_metadata
from helpers import TINY_SIZE, demo_module, put_in_cache, run_main, tiny_train_args
from models.spec import ModelSpec

ARCH = "efficientnet_b0"  # torchvision's EfficientNet_B0_Weights.IMAGENET1K_V1: bicubic, centre crop 224/256


def _expected_eval_input(path, size: int, crop_pct: float, mode: InterpolationMode) -> torch.Tensor:
    """The evaluation input computed here with torchvision directly: resize the short side, centre-crop."""
    image = decode_rgb(Path(path).read_bytes(), name=str(path))
    resized = F.resize(image, [int(size / crop_pct)], interpolation=mode, antialias=True)
    return F.center_crop(resized, [size, size])


def _train(data, out, *extra: str) -> tuple[dict, dict]:
    assert run_main(tiny_train_args(data, out, "--arch", ARCH, "--pretrained", "imagenet", "--epochs", "1",
                                    *extra)) == 0
    tag = extra[extra.index("--tag") + 1] if "--tag" in extra else "default"
    run = out / ARCH / tag
    ckpt = torch.load(run / "checkpoints" / "last.pth", weights_only=True)
    return yaml.safe_load((run / "config.yaml").read_text()), ckpt


def test_weights_bicubic_reaches_config_checkpoint_eval_resize_export_and_demo(tiny_data, tmp_path, caches):
    put_in_cache(ARCH, caches)
    data = tiny_data["folder"]
    cfg, ckpt = _train(data, tmp_path / "out")
    assert cfg["interpolation"] == "bicubic" and ckpt["config"]["interpolation"] == "bicubic"
    assert (cfg["eval_resize"], cfg["crop_pct"]) == ("center_crop", 0.875)

    # the run's evaluation transform resizes bicubic, pixel for pixel as torchvision's bicubic resize
    test_set = build_dataset(argparse.Namespace(**cfg), "test", ckpt["class_names"], train=False)
    path = test_set.samples[0][0]
    got = test_set.transform(test_set.load(0))
    bicubic = _expected_eval_input(path, TINY_SIZE, 0.875, InterpolationMode.BICUBIC)
    bilinear = _expected_eval_input(path, TINY_SIZE, 0.875, InterpolationMode.BILINEAR)
    assert not torch.equal(bicubic, bilinear)  # the 16 -> 18 px resize tells the two apart
    assert torch.equal(got, bicubic)

    # exports carry it, and the demo (no project import) resizes as the project does
    assert ckpt["model_spec"]["interpolation"] == "bicubic"
    meta = export_metadata(ModelSpec.from_dict(ckpt["model_spec"]))
    assert meta["interpolation"] == "bicubic"
    assert torch.equal(demo_module().Preprocessor(meta).load(path), bicubic)


def test_interpolation_set_by_the_user_wins_over_the_weights(tiny_data, tmp_path, caches):
    put_in_cache(ARCH, caches)
    cfg, ckpt = _train(tiny_data["folder"], tmp_path / "out", "--interpolation", "bilinear", "--tag", "own")
    assert cfg["interpolation"] == "bilinear" and ckpt["config"]["interpolation"] == "bilinear"
    assert cfg["eval_resize"] == "center_crop"  # the keys the user left unset still follow the weights


def test_cached_batches_crop_bicubic_like_torchvision():
    """--cache_dataset memory resamples its batched RandomResizedCrop with the same interpolation."""
    images = torch.randint(0, 256, (4, 3, 16, 16), dtype=torch.uint8)
    # scale and ratio 1: every box is the whole image, so the crop is a plain resize to 24 x 24
    crop = v2.RandomResizedCrop([24, 24], scale=(1.0, 1.0), ratio=(1.0, 1.0), interpolation=InterpolationMode.BICUBIC,
                                antialias=True)
    got = BatchAugment([crop])(images, seeds=[0, 1, 2, 3])
    expected = torch.stack([F.resize(image, [24, 24], interpolation=InterpolationMode.BICUBIC, antialias=True)
                            for image in images])
    assert torch.equal(got, expected)


@pytest.mark.parametrize("mode", ["bilinear", "bicubic"])
def test_demo_resize_equals_torchvision(mode):
    demo = demo_module()
    image = torch.randint(0, 256, (3, 13, 21), dtype=torch.uint8)
    expected = F.resize(image, [17, 30], interpolation=InterpolationMode(mode), antialias=True)
    assert torch.equal(demo.resize_uint8(image, 17, 30, mode), expected)
