"""Training strategies end to end: distillation, curriculum, LR range test, losses, augmentation, EMA."""
from __future__ import annotations

import logging

import pytest
import torch
import torch.nn as nn

import config
from applications.setup.strategies import build_batch_hook, build_criterion, soften
from dataloader import BatchPreprocessor, ClassificationDataset, create_transform
from helpers import run_main, tiny_train_args


def test_distill_temperature_and_missing_images(data, tmp_path, caplog):
    ds = ClassificationDataset(data, "folder", "train")
    keys = [ds.key(i) for i in range(len(ds))]
    lines = [f"{k},0.6,0.3,0.1" for k in keys[1:]]  # the first image has no teacher output
    (data / "distill_manual.txt").write_text("\n".join(lines) + "\n")
    cfg = config.parse_config(tiny_train_args(data, tmp_path, "--distill", "--distill_temperature", "2"))
    with pytest.raises(ValueError, match=r"1 of 30 training images are missing from the teacher files .*"
                                         r"first: train/0/"):
        build_batch_hook(cfg, ds)
    cfg.distill_missing, cfg.distill_alpha = "label", 1.0
    hook = build_batch_hook(cfg, ds)
    _, soft, _ = hook(torch.zeros(2, 3, 16, 16), torch.tensor([0, 0]), torch.tensor([0, 1]), 0, 0)
    assert soft[0].tolist() == [1.0, 0.0, 0.0]  # falls back to its label
    expected = torch.tensor([0.6, 0.3, 0.1]) ** 0.5
    assert torch.allclose(soft[1], expected / expected.sum(), atol=1e-6)  # T = 2 softens
    assert torch.allclose(soften(torch.tensor([[0.6, 0.3, 0.1]]), 1.0, "softmax"), torch.tensor([[0.6, 0.3, 0.1]]))


def test_distill_without_teacher_files_is_refused(data, tmp_path, capsys):
    assert run_main(tiny_train_args(data, tmp_path, "--distill")) == 2  # checked before the run, not by the parser
    assert "run --knowledge train --resume TEACHER.pth first" in capsys.readouterr().err
    assert not (tmp_path / "resnet18").exists()


def test_curriculum_zero_weight_gives_no_gradient(data, tmp_path, caplog):
    ds = ClassificationDataset(data, "folder", "train", transform=create_transform(False, (16, 16)))
    keys = [ds.key(i) for i in range(len(ds))]
    weights = [0.0 if t == 0 else 1.0 for t in ds.targets]  # every image of class 0 weighs nothing
    (data / "curriculum.txt").write_text("".join(f"{k},{w}\n" for k, w in zip(keys, weights)))
    cfg = config.parse_config(tiny_train_args(data, tmp_path, "--curriculum_learning"))
    with caplog.at_level(logging.INFO):
        hook = build_batch_hook(cfg, ds)
    assert f"curriculum {data / 'curriculum.txt'}: loss weights 1 / 0 for 20 / 10 training images" in caplog.text
    criterion = build_criterion(cfg, [10, 10, 10])
    images = torch.stack([ds[i][0] for i in range(len(ds))])
    x = BatchPreprocessor([0.5] * 3, [0.25] * 3, torch.device("cpu"))(images)
    target, index = torch.tensor(ds.targets), torch.arange(len(ds))
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, 3))
    x, t, w = hook(x, target, index, 0, 0)
    criterion(model(x), t, w).backward()
    with_curriculum = model[1].weight.grad.clone()
    model.zero_grad()
    keep = target != 0
    (criterion(model(x[keep]), t[keep]) * keep.sum() / len(keep)).backward()
    assert torch.allclose(with_curriculum, model[1].weight.grad, atol=1e-6)


def test_curriculum_file_errors(data, tmp_path):
    cfg = config.parse_config(tiny_train_args(data, tmp_path, "--curriculum_learning"))
    ds = ClassificationDataset(data, "folder", "train")
    with pytest.raises(FileNotFoundError, match="curriculum.txt does not exist; make it with --make_curriculum"):
        build_batch_hook(cfg, ds)
    (data / "curriculum.txt").write_text(f"{ds.key(0)},0.5\n")
    with pytest.raises(ValueError, match="29 of 30 training images are missing"):
        build_batch_hook(cfg, ds)
    cfg.curriculum_missing_weight = 0.2
    assert build_batch_hook(cfg, ds).curriculum.tolist()[:2] == [0.5, pytest.approx(0.2)]


def test_lr_finder_never_suggests_the_first_or_last_tenth_of_its_sweep():
    """A reported sweep: the second batch's lower loss made step 0 the steepest, so 1e-6 was suggested.
    A curve that drops at once, stays flat, falls fastest around step 50 and diverges after 80."""
    import numpy as np

    from applications.lr_finder import smooth, suggest_lr
    steps = 100
    lrs = (1e-6 * (10 / 1e-6) ** (np.arange(steps) / (steps - 1))).tolist()
    losses = [2.4, 1.4] + [1.4 - 0.001 * i for i in range(38)] + [1.36 - 0.05 * i for i in range(20)] \
        + [0.36 + 0.002 * i for i in range(20)] + [0.4 * 1.2 ** i for i in range(20)]
    suggestion = suggest_lr(lrs, smooth(losses), planned_steps=steps)
    assert lrs[10] <= suggestion < lrs[90]
    assert lrs[40] <= suggestion <= lrs[60]  # where the loss falls fastest
    # a sweep that diverged early: still not from its first tenth, nor from the smoothing's warm-up
    assert suggest_lr(lrs[:30], smooth(losses[:30]), planned_steps=steps) >= lrs[10]


@pytest.mark.parametrize("flags, needed", [
    ([], False),
    (["--weighted_loss", "--class_weights", "auto"], True),
    (["--weighted_loss", "--class_weights", " AUTO "], True),
    (["--weighted_loss", "--class_weights", "1", "2", "3"], False),
    (["--class_weights", "auto"], False),  # not applied without --weighted_loss
])
def test_the_class_counts_are_read_only_for_auto_class_weights(data, tmp_path, flags, needed):
    from applications.setup.strategies import needs_class_counts
    assert needs_class_counts(config.parse_config(tiny_train_args(data, tmp_path, *flags))) is needed
