"""--cache_dataset memory: the batched augmentations follow torchvision's, and the cached loader serves
the same samples, labels and (where the transform is deterministic or per-image) the same pixels."""
from __future__ import annotations

import math

import pytest
import torch

from dataloader import ClassificationDataset, create_loader, create_transform
from helpers import jpeg_copy, read_json, run_main, tiny_train_args


def test_training_with_the_cache_runs_and_records_it(tiny_data, tmp_path):
    args = tiny_train_args(tiny_data["folder"], tmp_path, "--cache_dataset", "memory", "--train_resize", "rrc",
                           "--hflip", "0.5", "--tag", "cached")
    assert run_main(args) == 0
    run = tmp_path / "resnet18" / "cached"
    metrics = read_json(run / "metrics.json")
    assert len(metrics["history"]) == 2 and math.isfinite(metrics["history"][-1]["train_loss"])
    assert "cache_dataset: memory" in (run / "config.yaml").read_text()


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (nvjpeg)")
def test_gpu_decode_matches_cpu_decode_on_cuda(tiny_data, tmp_path):
    root = jpeg_copy(tiny_data["folder"], tmp_path / "jpegs")
    dataset = ClassificationDataset(root, "folder", "train", transform=create_transform(False, (16, 16)))
    cpu = create_loader(dataset, batch_size=8, workers=0, train=False)
    gpu = create_loader(dataset, batch_size=8, workers=0, train=False, decode_on_device=True, device="cuda")
    for (a, ta, _), (b, tb, _) in zip(cpu, gpu, strict=True):
        assert b.is_cuda and torch.equal(ta, tb.cpu())
        assert (a.float() - b.cpu().float()).abs().mean() < 2.0  # nvjpeg's IDCT differs by a level or so
    args = tiny_train_args(root, tmp_path / "run", "--gpu_decode", "--device", "cuda")
    assert run_main(args) == 0
