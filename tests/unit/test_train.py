"""Training without an end-to-end run: device and class-count errors, gradient accumulation, evaluate's counts,
the diverging-loss warning."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from criterions import create_criterion
from dataloader import BatchPreprocessor, ClassificationDataset, create_loader, create_transform
from engine import evaluate, train_one_epoch
from helpers import run_main, tiny_train_args
from optim import create_optimizer


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_asking_for_a_missing_gpu_is_a_clear_error(tiny_data, tmp_path, caplog):
    assert run_main(tiny_train_args(tiny_data["folder"], tmp_path, "--device", "cuda")) == 1
    assert "--device cuda: CUDA is not available on this machine; use --device cpu" in caplog.text


def test_num_classes_mismatch_is_an_error(tiny_data, tmp_path, caplog):
    assert run_main(tiny_train_args(tiny_data["folder"], tmp_path, "--num_classes", "5")) == 1
    assert "--num_classes 5 disagrees with the data" in caplog.text and "has 3 classes" in caplog.text


def test_gradient_accumulation_equals_the_big_batch(tiny_data):
    """4 x accumulation 2 == batch 8, the smaller last batch included (30 samples)."""
    ds = ClassificationDataset(tiny_data["folder"], "folder", "train", transform=create_transform(False, (16, 16)))
    pre = BatchPreprocessor([0.5] * 3, [0.25] * 3, torch.device("cpu"))
    results = []
    for batch, accum in ((8, 1), (4, 2)):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, 3))
        opt = create_optimizer(model, "sgd", lr=0.1, momentum=0.9)
        loader = create_loader(ds, batch_size=batch, workers=0, train=True, seed=1)
        out = train_one_epoch(model, loader, create_criterion("softmax"), opt, preprocess=pre,
                              accumulation_steps=accum, progress=False)
        assert out["steps"] == 4
        results.append(model[1].weight.detach().clone())
    assert torch.allclose(results[0], results[1], atol=1e-6)


def test_evaluate_counts_every_sample_once(tiny_data):
    ds = ClassificationDataset(tiny_data["folder"], "folder", "val", transform=create_transform(False, (16, 16)))
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, 3))
    out = evaluate(model, create_loader(ds, batch_size=5, workers=0, train=False), create_criterion("softmax"),
                   preprocess=BatchPreprocessor([0.5] * 3, [0.25] * 3, torch.device("cpu")), return_outputs=True)
    assert out["count"] == 12 and out["indices"].tolist() == list(range(12))
    # batches of 5, 5 and 2, read back at the end: the loss is the mean over all 12 samples
    expected = nn.functional.cross_entropy(out["logits"], out["targets"]).item()
    assert out["loss"] == pytest.approx(expected, rel=1e-5)
    assert out["top1"] == pytest.approx(100 * (out["logits"].argmax(1) == out["targets"]).float().mean().item())
    assert out["top5"] == 100.0  # 3 classes: the top 5 holds every class


def test_a_diverging_validation_loss_is_warned_about(caplog):
    import logging

    from engine.epoch_end import warn_if_diverging
    history = [{"val_loss": 2.0}, {"val_loss": 0.5}, {"val_loss": float("nan")}]
    with caplog.at_level(logging.WARNING):
        assert not warn_if_diverging(49.0, history, epoch=3)
        assert warn_if_diverging(60.0, history, epoch=3)
        assert not warn_if_diverging(float("nan"), history, epoch=3)  # nan: the non-finite guard's case
        assert not warn_if_diverging(1e9, [], epoch=0)
    assert caplog.text.count("diverging") == 1
    assert "epoch 4: val loss 60 is over 100x its best (0.5)" in caplog.text and "--clip_grad" in caplog.text


def _one_epoch_sums(tiny_data, readback_every: int, criterion=None) -> dict:
    ds = ClassificationDataset(tiny_data["folder"], "folder", "train", transform=create_transform(False, (16, 16)))
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, 3))
    opt = create_optimizer(model, "sgd", lr=0.1, momentum=0.9)
    loader = create_loader(ds, batch_size=4, workers=0, train=True, seed=1)
    return train_one_epoch(model, loader, criterion or create_criterion("softmax"), opt,
                           preprocess=BatchPreprocessor([0.5] * 3, [0.25] * 3, torch.device("cpu")),
                           progress=False, readback_every=readback_every)


def test_reading_the_loss_back_every_few_batches_gives_the_same_sums(tiny_data):
    """A GPU run reads loss and top-1 back every 10th batch (one wait instead of three a step): the sums are
    added in batch order, so they equal a read per batch exactly; 30 samples in batches of 4 leave a
    partial window of 3 that the end of the epoch reads."""
    each, grouped = _one_epoch_sums(tiny_data, 1), _one_epoch_sums(tiny_data, 4)
    assert grouped["partial"] == each["partial"] and grouped["partial"]["seen"] == 30
    assert (grouped["loss"], grouped["top1"]) == (each["loss"], each["top1"])


def test_a_non_finite_loss_read_back_late_still_names_its_batch(tiny_data):
    """The loss goes nan at the 3rd batch; read back in windows of 5 it is found with the window, yet the
    error names batch 3, as a read per batch does."""
    class NanAtThird(nn.Module):
        calls = 0

        def forward(self, logits, target, weight=None):
            self.calls += 1
            loss = nn.functional.cross_entropy(logits, target)
            return loss * float("nan") if self.calls == 3 else loss

    for every in (1, 5):
        with pytest.raises(FloatingPointError, match="the loss became nan at epoch 1, batch 3"):
            _one_epoch_sums(tiny_data, every, NanAtThird())
