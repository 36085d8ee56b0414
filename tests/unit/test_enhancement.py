"""dataloader/enhancement: policies, create_transform's policy/erasing, mixup/cutmix, multi-scale,
the class-balanced sampler and the preview grid."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
import torch.nn as nn
from PIL import Image
from torchvision.transforms import v2

from dataloader import (
    ClassBalancedSampler,
    ClassificationDataset,
    CustomPolicyConfig,
    MixupCutmix,
    MultiScale,
    SeededSampler,
    create_loader,
    create_policy,
    create_transform,
    make_augmented_grid,
    save_augmented_grid,
)
from dataloader.enhancement import AUTOAUGMENT_POLICIES, POLICIES

ZERO = dict(hflip=0.0, vflip=0.0, rotate=0.0, crop_min_scale=0.0, blur_prob=0.0, noise_std=0.0, color_jitter=0.0)


def image(seed: int = 0, size: int = 16) -> torch.Tensor:
    """A structured colour test image: a gradient plus a bright off-centre square plus noise."""
    g = torch.Generator().manual_seed(seed)
    y, x = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    img = torch.stack([x * 12, y * 10, (x + y) * 5]).float() + torch.randint(0, 40, (3, size, size), generator=g)
    img[:, 2:7, 3:6] = torch.tensor([250.0, 30.0, 90.0]).view(3, 1, 1)
    return img.clamp(0, 255).to(torch.uint8)


def run_seeded(policy: nn.Module, img: torch.Tensor, seed: int) -> torch.Tensor:
    torch.manual_seed(seed)
    return policy(img)


ALL_POLICIES = [("autoaugment", {"autoaugment_policy": p}) for p in AUTOAUGMENT_POLICIES] + [
    ("randaugment", {"randaugment_n": 2, "randaugment_m": 9}), ("trivialaugment", {}), ("custom", {})]


@pytest.mark.parametrize("name, kwargs", ALL_POLICIES, ids=lambda v: v if isinstance(v, str) else "")
def test_policy_is_uint8_same_size_changes_images_and_is_seeded(name, kwargs):
    policy = create_policy(name, **kwargs)
    img = image(1)
    outs = [run_seeded(policy, img, s) for s in range(6)]
    assert all(o.dtype == torch.uint8 and o.shape == img.shape for o in outs)
    assert sum(not torch.equal(o, img) for o in outs) >= 3
    assert torch.equal(outs[2], run_seeded(policy, img, 2))
    assert len({o.numpy().tobytes() for o in outs}) >= 3  # different seeds, different augmentations


def test_policy_registry_names_and_errors():
    assert set(POLICIES) == {"autoaugment", "randaugment", "trivialaugment", "custom"}
    with pytest.raises(ValueError, match="autoaugment, randaugment, trivialaugment, custom"):
        create_policy("augmix")
    with pytest.raises(ValueError, match="imagenet, cifar10, svhn"):
        create_policy("autoaugment", autoaugment_policy="coco")
    with pytest.raises(ValueError, match="probability"):
        CustomPolicyConfig(hflip=1.5)


def test_custom_policy_with_all_strengths_zero_is_identity():
    policy = create_policy("custom", custom=CustomPolicyConfig(**ZERO))
    img = image(2)
    assert all(torch.equal(run_seeded(policy, img, s), img) for s in range(4))
    crop_one = create_policy("custom", custom=CustomPolicyConfig(**{**ZERO, "crop_min_scale": 1.0}))
    assert torch.equal(run_seeded(crop_one, img, 0), img)


@pytest.mark.parametrize("field, value", [("hflip", 1.0), ("vflip", 1.0), ("rotate", 30.0), ("crop_min_scale", 0.4),
                                          ("blur_prob", 1.0), ("noise_std", 10.0), ("color_jitter", 0.5)])
def test_each_custom_op_alone_changes_the_image(field, value):
    config = CustomPolicyConfig(**{**ZERO, field: value})
    policy = create_policy("custom", custom=config)
    img = image(3)
    outs = [run_seeded(policy, img, s) for s in range(3)]
    assert all(o.dtype == torch.uint8 and o.shape == img.shape for o in outs)
    assert all(not torch.equal(o, img) for o in outs), f"{field}={value} left the image unchanged"
    if field == "hflip":
        assert torch.equal(outs[0], img.flip(-1))
    if field == "noise_std":  # noise is zero-mean and of the asked size (clamping aside)
        diff = outs[0].float() - img.float()
        assert abs(diff.mean()) < 1.5 and 7 < diff.std() < 13


def ops(transform) -> list[type]:
    return [type(t) for t in transform.transforms]


def test_create_transform_defaults_are_unchanged():
    img = image(4, size=20)
    for kwargs in ({}, {"train_resize": "rrc", "hflip": 0.5}):
        old = create_transform(True, (16, 16), **kwargs)
        new = create_transform(True, (16, 16), **kwargs, policy=None, random_erasing=0.0)
        assert ops(old) == ops(new) == ([v2.RandomResizedCrop, v2.RandomHorizontalFlip] if kwargs
                                        else [type(old.transforms[0])])
        assert torch.equal(run_seeded(old, img, 7), run_seeded(new, img, 7))


def test_policy_and_random_erasing_are_training_only():
    policy = create_policy("custom")
    train = create_transform(True, (16, 16), train_resize="rrc", hflip=0.5, policy=policy, random_erasing=1.0)
    assert ops(train) == [v2.RandomResizedCrop, v2.RandomHorizontalFlip, type(policy), v2.RandomErasing]
    assert train.transforms[2] is policy
    white = torch.full((3, 16, 16), 255, dtype=torch.uint8)
    erased = run_seeded(create_transform(True, (16, 16), random_erasing=1.0), white, 0)
    assert erased.dtype == torch.uint8 and (erased == 0).any() and (erased == 255).any()
    img = image(5, size=24)
    for eval_resize in ("letterbox", "center_crop"):
        plain = create_transform(False, (16, 16), eval_resize=eval_resize)
        with_aug = create_transform(False, (16, 16), eval_resize=eval_resize, policy=policy, random_erasing=1.0)
        assert repr(plain) == repr(with_aug)
        assert torch.equal(run_seeded(plain, img, 1), run_seeded(with_aug, img, 2))
    with pytest.raises(ValueError, match="random_erasing"):
        create_transform(True, (16, 16), random_erasing=1.5)


def batch(n: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    """Images whose sample ``i`` is the constant ``i`` (so a sample and its flipped partner always differ)."""
    x = torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1).expand(n, 3, 12, 10).contiguous()
    x = x + torch.linspace(0, 0.5, 12 * 10).view(1, 1, 12, 10)
    return x, torch.tensor([0, 1, 2, 3, 4, 0])[:n]


def test_mixup_images_and_targets_follow_the_drawn_lambda():
    mix = MixupCutmix(5, mixup_alpha=0.4)
    x, y = batch()
    rng_before = torch.get_rng_state()
    out, soft = mix(x.clone(), y, torch.Generator().manual_seed(11))
    assert torch.equal(torch.get_rng_state(), rng_before)  # global RNG untouched
    assert soft.shape == (6, 5) and torch.allclose(soft.sum(1), torch.ones(6))
    lam = soft[1, 1].item()  # sample 1 (class 1) is mixed with sample 4 (class 4)
    assert 0.0 < lam < 1.0 and soft[1, 4].item() == pytest.approx(1 - lam)
    assert torch.allclose(out, lam * x + (1 - lam) * x.flip(0), atol=1e-5)
    again, soft_again = mix(x.clone(), y, torch.Generator().manual_seed(11))
    assert torch.equal(out, again) and torch.equal(soft, soft_again)
    other, _ = mix(x.clone(), y, torch.Generator().manual_seed(12))
    assert not torch.equal(out, other)


def test_cutmix_box_area_equals_one_minus_lambda():
    mix = MixupCutmix(5, cutmix_alpha=1.0)
    x, y = batch()
    seen = 0
    for seed in range(8):
        out, soft = mix(x, y, torch.Generator().manual_seed(seed))
        assert torch.allclose(soft.sum(1), torch.ones(6))
        lam = soft[1, 1].item()
        pasted = (out[1] != x[1]).any(0)
        assert pasted.float().mean().item() == pytest.approx(1 - lam, abs=1e-6)
        rows, cols = pasted.nonzero(as_tuple=True)
        if len(rows):
            seen += 1  # the pasted region is one rectangle holding the partner's pixels
            box = (slice(int(rows.min()), int(rows.max()) + 1), slice(int(cols.min()), int(cols.max()) + 1))
            assert pasted[box].all() and torch.equal(out[1][:, box[0], box[1]], x[4][:, box[0], box[1]])
    assert seen >= 4


def test_mix_prob_zero_and_switching():
    x, y = batch()
    out, soft = MixupCutmix(5, mixup_alpha=1.0, cutmix_alpha=1.0, prob=0.0)(x, y, torch.Generator().manual_seed(0))
    assert torch.equal(out, x) and torch.equal(soft, torch.nn.functional.one_hot(y, 5).float())
    both = MixupCutmix(5, mixup_alpha=1.0, cutmix_alpha=1.0, switch_prob=0.5)
    kinds = set()
    for seed in range(12):
        out, _ = both(x, y, torch.Generator().manual_seed(seed))
        changed = (out[1] != x[1]).any(0)
        kinds.add("mixup" if changed.all() else "cutmix")
    assert kinds == {"mixup", "cutmix"}
    _, smooth = MixupCutmix(5, prob=0.0, label_smoothing=0.1)(x, y, torch.Generator())
    assert torch.allclose(smooth.sum(1), torch.ones(6)) and smooth.min().item() == pytest.approx(0.02)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_mix_on_cuda_matches_cpu():
    mix = MixupCutmix(5, mixup_alpha=0.4, cutmix_alpha=1.0)
    x, y = batch()
    for seed in range(4):
        cpu = mix(x, y, torch.Generator().manual_seed(seed))
        gpu = mix(x.cuda(), y.cuda(), torch.Generator().manual_seed(seed))
        assert all(torch.allclose(a, b.cpu(), atol=1e-6) for a, b in zip(cpu, gpu))


def test_multiscale_sizes_keep_aspect_and_are_seeded():
    base, jitter, multiple = (128, 96), 0.15, 8
    ms = MultiScale(base, jitter=jitter, multiple=multiple)
    x = torch.rand(2, 3, *base)
    g = torch.Generator().manual_seed(0)
    rng_before = torch.get_rng_state()
    sizes = [tuple(ms(x, g).shape[-2:]) for _ in range(12)]
    assert torch.equal(torch.get_rng_state(), rng_before)
    assert len(set(sizes)) >= 3
    for h, w in sizes:
        assert h % multiple == 0 and w % multiple == 0
        # one scale s in [1 - jitter, 1 + jitter] explains both sides up to the rounding (aspect kept)
        tol = multiple / 2
        low = max(1 - jitter, (h - tol) / base[0], (w - tol) / base[1])
        high = min(1 + jitter, (h + tol) / base[0], (w + tol) / base[1])
        assert low <= high + 1e-9, (h, w)
    g2 = torch.Generator().manual_seed(0)
    assert [tuple(ms(x, g2).shape[-2:]) for _ in range(12)] == sizes
    assert torch.equal(ms(x, torch.Generator().manual_seed(3)), ms(x, torch.Generator().manual_seed(3)))
    tiny = MultiScale((8, 8), jitter=0.5, multiple=8)
    assert tiny.size_for(0.5) == (8, 8)  # never below one multiple


def test_class_balanced_sampler_balances_and_is_seeded():
    targets = [0] * 900 + [1] * 100
    sampler = ClassBalancedSampler(targets, seed=0)
    sampler.set_epoch(0)
    keys = list(sampler)
    assert len(keys) == len(sampler) == 1000
    share = sum(targets[i] for i, _ in keys) / len(keys)
    assert abs(share - 0.5) < 0.06
    assert all(isinstance(i, int) and isinstance(s, int) for i, s in keys)
    assert keys == list(ClassBalancedSampler(targets, seed=0))
    sampler.set_epoch(1)
    assert [i for i, _ in sampler] != [i for i, _ in keys]
    shards = [ClassBalancedSampler(targets[:999], seed=4, rank=r, world_size=2) for r in range(2)]
    parts = [list(s) for s in shards]
    assert len(parts[0]) == len(parts[1]) == 500
    assert parts[0] == list(shards[0]) and not set(parts[0]) & set(parts[1])  # seeded; distinct draws


def test_create_loader_picks_the_class_balanced_sampler_for_training_only(tiny_data):
    ds = ClassificationDataset(tiny_data["folder"], "folder", "train")
    assert isinstance(create_loader(ds, batch_size=4, workers=0, train=True, class_balanced=True).sampler,
                      ClassBalancedSampler)
    assert isinstance(create_loader(ds, batch_size=4, workers=0, train=True).sampler, SeededSampler)
    evaluation = create_loader(ds, batch_size=4, workers=0, train=False, class_balanced=True)
    assert isinstance(evaluation.sampler, SeededSampler)
    assert [i for i, _ in evaluation.sampler] == list(range(len(ds)))


def test_class_balanced_augmented_batches_do_not_depend_on_workers(tiny_data):
    transform = create_transform(True, (16, 16), train_resize="rrc", rrc_scale=(0.5, 1.0), hflip=0.5,
                                 policy=create_policy("randaugment"), random_erasing=0.25)
    ds = ClassificationDataset(tiny_data["folder"], "folder", "train", transform=transform)
    runs = []
    for workers in (0, 2):
        loader = create_loader(ds, batch_size=8, workers=workers, train=True, seed=5, class_balanced=True)
        loader.sampler.set_epoch(1)
        runs.append([torch.cat(parts) for parts in zip(*[(x, t, i) for x, t, i in loader])])
    assert all(torch.equal(a, b) for a, b in zip(*runs))
    indices = runs[0][2].tolist()
    assert len(set(indices)) < len(indices)  # drawn with replacement


class FloatDataset(torch.utils.data.Dataset):
    """Normalised float images, to check that the preview un-normalises them."""

    def __init__(self, images, mean, std):
        self.images, self.mean, self.std = images, torch.tensor(mean).view(3, 1, 1), torch.tensor(std).view(3, 1, 1)

    def __len__(self):
        return len(self.images)

    def __getitem__(self, key):
        return (self.images[key[0]].float() / 255 - self.mean) / self.std, 0


def test_preview_grid_png_has_expected_size_and_is_reproducible(tiny_data, tmp_path):
    transform = create_transform(True, (16, 16), train_resize="rrc", hflip=0.5, policy=create_policy("custom"))
    ds = ClassificationDataset(tiny_data["folder"], "folder", "train", transform=transform)
    path = save_augmented_grid(ds, tmp_path / "sub" / "augment.png", n=10, seed=3)
    with Image.open(path) as im:
        assert im.format == "PNG" and im.mode == "RGB" and im.size == (8 * 18 + 2, 2 * 18 + 2)
        pixels = torch.from_numpy(np.array(im)).permute(2, 0, 1)
    grid = make_augmented_grid(ds, n=10, seed=3)
    assert grid.dtype == torch.uint8 and torch.equal(grid, pixels)
    assert not torch.equal(grid, make_augmented_grid(ds, n=10, seed=4))
    imgs = [image(s) for s in range(3)]
    mean, std = [0.5, 0.4, 0.3], [0.2, 0.25, 0.3]
    from_float = make_augmented_grid(FloatDataset(imgs, mean, std), n=3, mean=mean, std=std)
    from_uint8 = make_augmented_grid(FloatDataset(imgs, [0, 0, 0], [1, 1, 1]), n=3)
    assert (from_float.int() - from_uint8.int()).abs().max() <= 1


def test_custom_policy_config_is_a_plain_dataclass():
    fields = {f.name for f in dataclasses.fields(CustomPolicyConfig)}
    assert set(ZERO) | {"blur_sigma"} == fields
