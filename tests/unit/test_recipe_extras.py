"""The DeiT/timm recipe extras: --repeated_aug (the repeated-augmentation sampler), --mixup_off_epoch and
--bce_target_thresh, each against its defining property and, where timm has one, timm's implementation."""
from __future__ import annotations

import math
from collections import Counter

import pytest
import torch
from timm.data.distributed_sampler import RepeatAugSampler
from timm.data.mixup import mixup_target
from timm.loss import BinaryCrossEntropy

import config
from applications.setup.strategies import BatchHook
from criterions import create_criterion
from dataloader import MixupCutmix, RepeatedAugSampler, SeededSampler, create_loader
from engine import train_one_epoch


def epoch_keys(size: int, repeats: int, world: int, epoch: int = 0, seed: int = 0) -> list[list[tuple[int, int]]]:
    """Each rank's keys of one epoch, the ranks simulated by giving ``world_size`` and ``rank`` explicitly."""
    out = []
    for rank in range(world):
        sampler = RepeatedAugSampler(size, repeats=repeats, seed=seed, rank=rank, world_size=world)
        sampler.set_epoch(epoch)
        keys = list(sampler)
        assert len(keys) == len(sampler)
        out.append(keys)
    return out


@pytest.mark.parametrize("size, repeats, world", [(10, 3, 1), (37, 3, 4), (37, 2, 8), (100, 4, 3), (5, 3, 8)])
def test_repeated_aug_index_order_equals_timms_repeat_aug_sampler(size, repeats, world):
    """Same algorithm as timm's RepeatAugSampler with selected_round=0 (the epoch cut to ceil(len / world) per
    rank): with seed 0 (timm seeds its generator with the epoch alone) the same indices, rank by rank."""
    for epoch in (0, 3):
        ours = epoch_keys(size, repeats, world, epoch=epoch)
        for rank in range(world):
            timm_sampler = RepeatAugSampler(list(range(size)), num_replicas=world, rank=rank, num_repeats=repeats,
                                            selected_round=0)
            timm_sampler.set_epoch(epoch)
            assert [index for index, _ in ours[rank]] == list(timm_sampler)
            assert len(ours[rank]) == len(timm_sampler)


@pytest.mark.parametrize("size, repeats, world", [(37, 3, 4), (40, 3, 3), (64, 2, 8), (30, 4, 1)])
def test_each_drawn_image_comes_repeats_times_spread_over_the_ranks(size, repeats, world):
    ranks = epoch_keys(size, repeats, world, epoch=1, seed=5)
    drawn = [(index, rank) for rank, keys in enumerate(ranks) for index, _ in keys]
    # an epoch keeps the dataset's length (rounded up to a multiple of the ranks, as the plain padded sampler)
    assert len(drawn) == math.ceil(size / world) * world
    assert [len(keys) for keys in ranks] == [len(SeededSampler(size, shuffle=True, seed=5, rank=r, world_size=world))
                                             for r in range(world)]
    counts = Counter(index for index, _ in drawn)
    # every image drawn comes `repeats` times, but the one the epoch's end cuts through
    assert sum(c != repeats for c in counts.values()) <= 1 and max(counts.values()) == repeats
    assert len(counts) == math.ceil(len(drawn) / repeats)  # so about size / repeats distinct images an epoch
    for index in counts:  # its copies on min(repeats, world) different ranks (DeiT: one copy per GPU)
        on = [rank for i, rank in drawn if i == index]
        assert len(set(on)) == min(len(on), world)
    # each copy is augmented apart: its own sample seed
    seeds = [seed for keys in ranks for _, seed in keys]
    assert len(set(seeds)) == len(seeds)
    # the next epoch draws from another permutation: another subset of the images
    assert {index for keys in epoch_keys(size, repeats, world, epoch=2, seed=5) for index, _ in keys} != set(counts)


def test_repeated_aug_is_a_function_of_seed_and_epoch_and_resumes_mid_epoch():
    a = epoch_keys(50, 3, 2, epoch=4, seed=7)
    assert a == epoch_keys(50, 3, 2, epoch=4, seed=7)
    assert a != epoch_keys(50, 3, 2, epoch=5, seed=7) and a != epoch_keys(50, 3, 2, epoch=4, seed=8)
    sampler = RepeatedAugSampler(50, repeats=3, seed=7, rank=1, world_size=2)
    sampler.set_epoch(4, start=10)  # a run stopped after 10 keys of this rank continues with the 11th
    assert list(sampler) == a[1][10:] and len(sampler) == 25 - 10


class Tiny(torch.utils.data.Dataset):
    """``n`` 1x4x4 uint8 images of their index, labels ``index % classes``; keys ``(index, sample seed)``."""

    def __init__(self, n: int, classes: int = 3):
        self.n, self.classes = n, classes
        self.targets = [i % classes for i in range(n)]

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, key: tuple[int, int]):
        index = key[0]
        return torch.full((1, 4, 4), index, dtype=torch.uint8), self.targets[index], index


def test_create_loader_draws_repeated_copies_and_refuses_class_balanced_with_it():
    loader = create_loader(Tiny(12), batch_size=3, workers=0, train=True, seed=1, repeated_aug=3)
    assert isinstance(loader.sampler, RepeatedAugSampler)
    loader.sampler.set_epoch(0)
    batches = [index.tolist() for _, _, index in loader]
    assert all(len(set(b)) == 1 for b in batches) and len(batches) == 4  # one process: the copies in a row
    evaluation = create_loader(Tiny(12), batch_size=3, workers=0, train=False, repeated_aug=3)
    assert isinstance(evaluation.sampler, SeededSampler)  # evaluation keeps every image once
    with pytest.raises(ValueError, match="class-balanced sampling and repeated augmentation .* pick one"):
        create_loader(Tiny(12), batch_size=3, workers=0, train=True, class_balanced=True, repeated_aug=3)


def test_mixing_stops_at_mixup_off_epoch_in_the_training_loop():
    """A real train_one_epoch over epochs 0-3 with --mixup_off_epoch 2: epochs 0 and 1 mix (soft targets),
    2 and 3 do not; a hook built afresh (a run resumed at epoch 3) does not mix either."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    loader = create_loader(Tiny(8), batch_size=4, workers=0, train=True, seed=0)

    def make_hook() -> BatchHook:
        return BatchHook(seed=0, num_classes=3, mixer=MixupCutmix(3, mixup_alpha=1.0), mix_off_epoch=2)

    seen: dict[int, list[torch.Tensor]] = {}

    def recording(hook: BatchHook):
        def call(images, target, index, epoch, step):
            out = hook(images, target, index, epoch, step)
            seen.setdefault(epoch, []).append(out[1])
            return out
        return call

    hook = make_hook()
    for epoch in range(4):
        loader.sampler.set_epoch(epoch)
        train_one_epoch(model, loader, create_criterion("softmax"), optimizer, preprocess=lambda x: x.float(),
                        epoch=epoch, progress=False, batch_hook=recording(hook if epoch < 3 else make_hook()))
    for epoch, targets in seen.items():
        soft = [t.ndim == 2 and bool(((t > 0) & (t < 1)).any()) for t in targets]
        assert all(soft) if epoch < 2 else not any(soft), (epoch, soft)
    assert [hook.mixing(e) for e in range(4)] == [True, True, False, False]


def test_bce_target_threshold_equals_timms_binary_cross_entropy():
    """Mixed, smoothed targets binarised at T: the same loss as timm's BinaryCrossEntropy(target_threshold=T)
    fed by timm's mixup_target (smoothing first, then mixing; ours mixes, then the criterion smooths)."""
    g = torch.Generator().manual_seed(0)
    logits, labels = torch.randn(6, 5, generator=g), torch.tensor([0, 1, 2, 3, 4, 1])
    ours = create_criterion("bce", label_smoothing=0.1, target_threshold=0.2)
    theirs = BinaryCrossEntropy(smoothing=0.1, target_threshold=0.2)
    plain = create_criterion("bce", label_smoothing=0.1)
    for lam in (0.7, 0.85):  # the second class keeps 0.29 (-> 1) or 0.155 (-> 0) of the target
        one_hot = torch.nn.functional.one_hot(labels, 5).float()
        mixed = lam * one_hot + (1 - lam) * one_hot.flip(0)
        expected = theirs(logits, mixup_target(labels, 5, lam=lam, smoothing=0.1))
        assert torch.allclose(ours(logits, mixed), expected, atol=1e-6)
        assert not torch.allclose(plain(logits, mixed), expected, atol=1e-3)  # the threshold does change it
    assert torch.allclose(ours(logits, labels), theirs(logits, labels), atol=1e-6)  # class indices too
    sets = (torch.rand(6, 5, generator=g) < 0.4).float()  # --multi_label: mixed label sets, binarised alike
    mixed_sets = 0.85 * sets + 0.15 * sets.flip(0)
    multi = create_criterion("bce", multi_label=True, target_threshold=0.2)
    expected = BinaryCrossEntropy(smoothing=0.0, target_threshold=0.2)(logits, mixed_sets)
    assert torch.allclose(multi(logits, mixed_sets), expected, atol=1e-6)
    assert not torch.allclose(create_criterion("bce", multi_label=True)(logits, mixed_sets), expected, atol=1e-3)
    with pytest.raises(ValueError, match="target threshold binarises the targets of the bce criterion"):
        create_criterion("softmax", target_threshold=0.2)


@pytest.mark.parametrize("argv, message", [
    (["--repeated_aug", "1"], "--repeated_aug must be 0 (off) or >= 2"),
    (["--repeated_aug", "3", "--class_balanced"], "--repeated_aug with --class_balanced"),
    (["--mixup_off_epoch", "3"], "--mixup_off_epoch says when --mixup/--cutmix stop"),
    (["--mixup", "0.2", "--mixup_off_epoch", "0"], "--mixup_off_epoch must be >= 1"),
    (["--bce_target_thresh", "0.2"], "--criterion is softmax: add --criterion bce"),
    (["--criterion", "bce", "--bce_target_thresh", "1.5"], "--bce_target_thresh must be in [0, 1)"),
])
def test_the_flags_refuse_what_cannot_apply_in_one_line(capsys, argv, message):
    with pytest.raises(SystemExit) as exit_info:
        config.parse_config(["--train", *argv])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and message in err and err.count("\n") == 1
    cfg = config.parse_config(["--train", "--repeated_aug", "3", "--cutmix", "1", "--mixup_off_epoch", "5",
                               "--criterion", "bce", "--bce_target_thresh", "0.2"])
    assert (cfg.repeated_aug, cfg.mixup_off_epoch, cfg.bce_target_thresh) == (3, 5, 0.2)
