"""Training strategies end to end: distillation, curriculum, LR range test, losses, augmentation, EMA."""
from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from PIL import Image

import config
from applications.curriculum import curriculum_weights
from applications.setup.strategies import build_batch_hook
from dataloader import ClassificationDataset, create_transform
from helpers import read_json, run_main, tiny_train_args
from utils.checkpoint import load_checkpoint
from utils.sidefiles import read_rows


def train(data, out, tag, *extra):
    assert run_main(tiny_train_args(data, out, "--tag", tag, *extra)) == 0
    return out / "resnet18" / tag


@pytest.fixture(scope="module")
def trained_checkpoint(tiny_run):
    """The teacher of the distillation and the scorer of the curriculum: a tiny run's best.pth (both read
    its predictions on a writable copy of the images it was trained on)."""
    return tiny_run / "checkpoints" / "best.pth"


def test_distillation_end_to_end(trained_checkpoint, data, tmp_path, caplog):
    best = str(trained_checkpoint)
    assert run_main(["--knowledge", "train", "--resume", best, "--data", str(data), "-j", "0", "--no_progress"]) == 0
    rows = read_rows(data / "distill_resnet18.txt", 3)
    labels = read_rows(data / "label.txt", 3)
    ds = ClassificationDataset(data, "folder", "train")
    assert set(rows) == set(labels) == {ds.key(i) for i in range(len(ds))}
    assert all(abs(sum(p) - 1) < 1e-4 for p in rows.values())
    assert all(labels[ds.key(i)] == F.one_hot(torch.tensor(t), 3).tolist() for i, t in enumerate(ds.targets))
    # existing files are kept unless --overwrite
    assert run_main(["--knowledge", "train", "--resume", best, "--data", str(data), "-j", "0"]) == 1
    assert "already exists; pass --overwrite" in caplog.text

    # the student's targets are alpha * teacher + (1 - alpha) * label: checked on a real batch
    cfg = config.parse_config(tiny_train_args(data, tmp_path / "out", "--distill", "--distill_alpha", "0.7"))
    hook = build_batch_hook(cfg, ds)
    index = torch.arange(len(ds))
    target = torch.tensor(ds.targets)
    _, soft, weight = hook(torch.zeros(len(ds), 3, 16, 16), target, index, 0, 0)
    teacher_probs = torch.tensor([rows[ds.key(i)] for i in range(len(ds))])
    teacher_probs = teacher_probs / teacher_probs.sum(1, keepdim=True)
    assert weight is None
    assert torch.allclose(soft, 0.7 * teacher_probs + 0.3 * F.one_hot(target, 3).float(), atol=1e-5)
    student = train(data, tmp_path / "out", "student", "--distill", "--distill_alpha", "0.7", "--epochs", "1")
    assert read_json(student / "metrics.json")["history"][0]["train_loss"] > 0


def test_curriculum_end_to_end(trained_checkpoint, data, tmp_path, caplog):
    best = str(trained_checkpoint)
    thresholds, weights = ["0.9", "0.6", "0.3", "0.0"], ["1", "0.5", "0.25", "0"]
    assert run_main(["--make_curriculum", "--resume", best, "--data", str(data), "-j", "0", "--no_progress",
                     "--curriculum_thresholds", *thresholds, "--curriculum_weights", *weights]) == 0
    table = read_rows(data / "curriculum.txt", 1)
    ds = ClassificationDataset(data, "folder", "train")
    assert set(table) == {ds.key(i) for i in range(len(ds))}
    assert {v[0] for v in table.values()} <= {1.0, 0.5, 0.25, 0.0}
    # the weights follow the model's true-class probabilities
    assert curriculum_weights(torch.tensor([0.95, 0.9, 0.7, 0.31, 0.1, 0.0]), [0.9, 0.6, 0.3, 0.0],
                              [1, 0.5, 0.25, 0]).tolist() == [1, 0.5, 0.5, 0.25, 0, 0]
    run = train(data, tmp_path / "out", "curriculum", "--curriculum_learning", "--epochs", "1")
    assert read_json(run / "metrics.json")["history"][0]["train_loss"] >= 0


def test_lr_finder(data, tmp_path):
    assert run_main(["--lr_finder", "--data", str(data), "--image_size", "16", "16", "-b", "8", "-j", "0",
                     "--output", str(tmp_path), "--lr_finder_steps", "12", "--lr_finder_min", "1e-4",
                     "--lr_finder_max", "1", "--no_progress"]) == 0
    result = read_json(tmp_path / "resnet18/default/lr_finder.json")
    lrs = result["lrs"]
    assert 2 <= len(lrs) <= 12 and lrs[0] == pytest.approx(1e-4)
    ratios = [b / a for a, b in zip(lrs, lrs[1:])]
    assert all(r == pytest.approx(10 ** (4 / 11)) for r in ratios)  # exponential sweep
    assert 1e-4 <= result["suggested_lr"] <= 1
    assert (tmp_path / "resnet18/default/lr_finder.png").stat().st_size > 1000


LOSS_OPTIONS = [
    ["--criterion", "bce"], ["--criterion", "bce", "--ghm_loss"], ["--ohm_loss"], ["--threshold_loss"],
    ["--focal_loss"], ["--weighted_loss"], ["--weighted_loss", "--class_weights", "1", "2", "0.5"],
    ["--criterion", "bce", "--focal_loss", "--ohm_loss", "--label_smoothing", "0.1"],
]


@pytest.mark.parametrize("flags", LOSS_OPTIONS, ids=lambda f: "_".join(a.strip("-") for a in f))
def test_every_loss_option_trains(tiny_data, tmp_path, flags):
    run = train(tiny_data["folder"], tmp_path, "loss", "--epochs", "1", *flags)
    h = read_json(run / "metrics.json")["history"][0]
    assert h["train_loss"] > 0 and h["val_loss"] > 0
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    assert all(cfg[f.lstrip("-")] in (True, "bce", ["1", "2", "0.5"], 0.1) for f in flags if f.startswith("--"))


def test_cost_matrix_from_yaml(tiny_data, tmp_path):
    (tmp_path / "cost.txt").write_text("0 1 1\n5 0 1\n1 1 0\n")
    (tmp_path / "c.yaml").write_text(yaml.safe_dump({"weighted_loss": True, "cost_matrix": str(tmp_path / "cost.txt"),
                                                     "criterion": "bce", "epochs": 1}))
    run = train(tiny_data["folder"], tmp_path, "cost", "--config", str(tmp_path / "c.yaml"))
    assert read_json(run / "metrics.json")["history"][0]["train_loss"] > 0


@pytest.mark.parametrize("flags", [
    ["--aug", "--aug_policy", "randaugment"], ["--aug", "--aug_policy", "autoaugment", "--autoaugment_policy", "svhn"],
    ["--aug", "--aug_policy", "trivialaugment"], ["--aug", "--aug_policy", "custom", "--custom_noise", "5"],
    ["--random_erasing", "0.5", "--class_balanced"], ["--mixup", "0.2", "--cutmix", "1.0", "--multi_scale"],
], ids=["randaugment", "autoaugment", "trivialaugment", "custom", "erasing_balanced", "mix_multiscale"])
def test_augmentations_train_and_show_samples(tiny_data, tmp_path, flags):
    run = train(tiny_data["folder"], tmp_path, "aug", "--epochs", "1", *flags)
    sheet = np.asarray(Image.open(run / "augmented_samples.png"))
    assert sheet.shape[1] > 800 and sheet.shape[0] > 300  # 96 px tiles with captions, not 16 px thumbnails
    assert read_json(run / "metrics.json")["history"][0]["train_loss"] > 0


def test_augmented_samples_are_a_shuffled_batch_after_every_batch_strategy(tiny_data, tmp_path):
    """The preview showed the first 32 images in dataset order (all one class on the digits), before
    mixup, cutmix and multi-scale: it is now the first shuffled training batch after the batch hook."""
    from dataloader.enhancement import first_training_batch, label_caption
    cfg = config.parse_config(tiny_train_args(tiny_data["folder"], tmp_path, "--mixup", "1.0", "--multi_scale"))
    ds = ClassificationDataset(tiny_data["folder"], "folder", "train", transform=create_transform(True, (16, 16)))
    plain, labels = first_training_batch(ds, n=8, seed=0)
    assert labels.ndim == 1 and len(set(labels.tolist())) > 1  # shuffled: more than one class
    images, target = first_training_batch(ds, n=8, seed=0, batch_hook=build_batch_hook(cfg, ds))
    assert target.shape == (8, 3) and (target.max(dim=1).values < 0.995).any()  # mixed: soft labels
    expected, *_ = build_batch_hook(cfg, ds)(plain, labels, torch.tensor([0] * 8), 0, 0)  # the same draw
    assert images.shape == expected.shape and images.shape[-1] % 8 == 0  # multi-scale's size
    names = ["zero", "one", "seven"]
    assert label_caption(torch.tensor(2), names) == "seven"
    assert label_caption(torch.tensor([0.7, 0.0, 0.3]), names) == "zero:0.70 seven:0.30"
    assert label_caption(torch.tensor([0.0, 1.0, 0.0]), names) == "one"


def test_mixing_run_resumes_exactly(tiny_data, tmp_path):
    """Mixup, cutmix, multi-scale, erasing and a policy all draw from seeded generators: a rerun
    after a stop ends with the same weights."""
    extra = ("--epochs", "2", "--mixup", "0.4", "--cutmix", "1.0", "--multi_scale", "--random_erasing", "0.3",
             "--aug", "--aug_policy", "custom", "--ema", "--ema_decay", "0.9", "--criterion", "bce", "--ghm_loss")
    full = train(tiny_data["folder"], tmp_path, "full", *extra)
    part = tmp_path / "resnet18/part"
    (part / "checkpoints").mkdir(parents=True)
    shutil.copy(full / "config.yaml", part / "config.yaml")
    shutil.copy(full / "checkpoints/last.pth.prev", part / "checkpoints/last.pth")
    train(tiny_data["folder"], tmp_path, "part", *extra)
    a, b = load_checkpoint(full / "checkpoints/last.pth"), load_checkpoint(part / "checkpoints/last.pth")
    for key in ("model", "model_ema", "criterion"):
        assert a[key].keys() == b[key].keys()
        assert all(torch.equal(a[key][k], b[key][k]) for k in a[key]), key


def test_recipe_extras_train_and_resume_past_mixup_off_epoch_exactly(tiny_data, tmp_path, caplog):
    """--repeated_aug, --mixup_off_epoch and --bce_target_thresh together: an epoch keeps the plain sampler's
    steps, mixing stops at epoch 1 (0-based), and a rerun after a stop in epoch 2 (past it: it must not mix
    again) ends with the weights of the run never stopped."""
    extra = ("--epochs", "3", "--repeated_aug", "2", "--mixup", "0.4", "--cutmix", "1.0", "--mixup_off_epoch", "1",
             "--criterion", "bce", "--bce_target_thresh", "0.2", "--label_smoothing", "0.1")
    full = train(tiny_data["folder"], tmp_path, "full", *extra)
    assert "epoch 2: mixup/cutmix off from now on (--mixup_off_epoch 1)" in caplog.text
    n = len(ClassificationDataset(tiny_data["folder"], "folder", "train"))
    batches = n // 8 if n % 8 == 1 else -(-n // 8)  # the plain sampler's batches (a batch of one dropped)
    assert load_checkpoint(full / "checkpoints/last.pth")["scheduler"]["last_epoch"] == 3 * batches
    part = tmp_path / "resnet18/part"
    (part / "checkpoints").mkdir(parents=True)
    shutil.copy(full / "config.yaml", part / "config.yaml")
    shutil.copy(full / "checkpoints/last.pth.prev", part / "checkpoints/last.pth")  # after epochs 0 and 1
    train(tiny_data["folder"], tmp_path, "part", *extra)
    a, b = load_checkpoint(full / "checkpoints/last.pth")["model"], load_checkpoint(part / "checkpoints/last.pth")
    assert all(torch.equal(a[k], b["model"][k]) for k in a) and b["epoch"] == 2


def test_ema_is_evaluated_and_saved(tiny_data, tmp_path):
    run = train(tiny_data["folder"], tmp_path, "ema", "--ema", "--ema_decay", "0.5")
    metrics = read_json(run / "metrics.json")
    assert all("val_ema_top1" in h for h in metrics["history"]) and "test_ema_top1" in metrics["test"]
    ckpt = load_checkpoint(run / "checkpoints/last.pth")
    assert ckpt["model_ema"].keys() == ckpt["model"].keys()
    assert any(not torch.equal(ckpt["model_ema"][k], ckpt["model"][k]) for k in ckpt["model"])


@pytest.mark.parametrize("flags, lrs", [
    (["--scheduler", "multistep", "--lr_steps", "1", "2", "--lr_ratios", "0.5", "0.25", "--epochs", "3"],
     [0.05, 0.025, 0.0125]),
    (["--scheduler", "step", "--lr_steps", "2", "--epochs", "3"], [0.05, 0.05, 0.005]),
])
def test_multistep_schedule_in_training(tiny_data, tmp_path, flags, lrs):
    # 30 images, batch 8: 4 steps an epoch; the LR logged is the one after the epoch's last step
    run = train(tiny_data["folder"], tmp_path, "ms", *flags)
    logged = [h["lr"] for h in read_json(run / "metrics.json")["history"]]
    assert logged == pytest.approx(lrs)


@pytest.mark.parametrize("name", ["nadam", "lamb", "ranger"])
def test_new_optimizers_train(tiny_data, tmp_path, name):
    run = train(tiny_data["folder"], tmp_path, name, "--epochs", "1", "--optimizer", name, "--lr", "0.003")
    assert read_json(run / "metrics.json")["history"][0]["train_loss"] > 0
