"""--cache_dataset memory: the batched augmentations follow torchvision's, and the cached loader serves
the same samples, labels and (where the transform is deterministic or per-image) the same pixels."""
from __future__ import annotations

import shutil

import pytest
import torch
from torchvision import transforms as v1
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from dataloader import ClassificationDataset, create_loader, create_policy, create_transform
from dataloader.cache import (
    BatchAugment,
    CachedLoader,
    CacheTooLarge,
    erasing_masks,
    resized_crops,
    rrc_boxes,
    split_transform,
)
from helpers import jpeg_copy, run_main, tiny_train_args


def _stats(boxes: torch.Tensor, height: int, width: int) -> torch.Tensor:
    top, left, h, w = boxes.double().unbind(1)
    return torch.stack([(h * w / (height * width)).mean(), torch.log(w / h).mean(), (top / height).mean(),
                        (left / width).mean(), (h / height).std()])


@pytest.mark.parametrize("height,width,scale", [(32, 32, (0.08, 1.0)), (48, 20, (0.6, 1.0)), (375, 500, (0.08, 1.0))])
def test_rrc_boxes_follow_torchvisions_distribution(height, width, scale):
    ratio = (3 / 4, 4 / 3)
    n = 20000
    ours = rrc_boxes(n, height, width, scale, ratio, torch.Generator().manual_seed(0))
    assert ((ours[:, 2] >= 1) & (ours[:, 3] >= 1) & (ours[:, 0] + ours[:, 2] <= height)
            & (ours[:, 1] + ours[:, 3] <= width)).all()
    torch.manual_seed(1)
    image = torch.zeros(3, height, width)
    ref = torch.tensor([v1.RandomResizedCrop.get_params(image, list(scale), list(ratio)) for _ in range(n)])
    # means of area fraction, log aspect, position and the spread of heights agree to sampling error
    assert torch.allclose(_stats(ours, height, width), _stats(ref, height, width), atol=0.012)


def test_rrc_fallback_is_torchvisions_central_crop():
    boxes = rrc_boxes(5, 30, 30, (1.0, 1.0), (2.0, 3.0), torch.Generator().manual_seed(0))
    ref = v1.RandomResizedCrop.get_params(torch.zeros(3, 30, 30), [1.0, 1.0], [2.0, 3.0])
    assert boxes.tolist() == [list(ref)] * 5


def test_resized_crops_are_bilinear_resizes_of_the_crops():
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (6, 3, 32, 32), generator=g).float()
    boxes = torch.tensor([[0, 0, 32, 32], [3, 5, 20, 17], [10, 0, 22, 30], [0, 9, 16, 16], [7, 7, 9, 12],
                          [1, 2, 30, 29]])
    out = resized_crops(images, boxes, (32, 32))
    for image, (t, l, h, w), got in zip(images, boxes.tolist(), out):
        want = F.resized_crop(image, t, l, h, w, [32, 32], antialias=False)
        # the same sample points; only the outermost pixels differ (roi_align reads the neighbour
        # outside the crop where a crop-then-resize clamps to the crop's edge)
        assert torch.allclose(got[:, 2:-2, 2:-2], want[:, 2:-2, 2:-2], atol=1e-3)
    assert torch.allclose(out[0], images[0], atol=1e-4)  # the whole image at its own size is itself


@pytest.mark.parametrize("box,size", [((0, 0, 96, 128), (24, 32)), ((5, 7, 80, 100), (24, 30)),
                                      ((0, 0, 96, 128), (40, 50))])
def test_resized_crops_shrinking_filters_like_an_antialiased_resize(box, size):
    # pixel noise is where aliasing shows: plain bilinear sampling keeps most of it, an area filter does not
    image = torch.rand(3, 96, 128, generator=torch.Generator().manual_seed(0)) * 255
    out = resized_crops(image[None], torch.tensor([box]), size)[0]
    antialiased = F.resized_crop(image, *box, list(size), antialias=True)
    aliased = F.resized_crop(image, *box, list(size), antialias=False)
    assert (out - antialiased).abs().mean() < (aliased - antialiased).abs().mean() / 3


def test_erasing_masks_follow_torchvisions_distribution():
    n, height, width, p = 20000, 32, 24, 0.7
    masks = erasing_masks(n, height, width, p, (0.02, 0.33), (0.3, 3.3), torch.Generator().manual_seed(0))
    erased = masks.flatten(1).sum(1).double()
    torch.manual_seed(0)
    ref_areas = []
    image = torch.zeros(3, height, width)
    for _ in range(n):
        if torch.rand(1) < p:
            i, j, h, w, _ = v1.RandomErasing.get_params(image, scale=(0.02, 0.33), ratio=(0.3, 3.3), value=[0])
            ref_areas.append(h * w)
        else:
            ref_areas.append(0)
    ref = torch.tensor(ref_areas, dtype=torch.float64)
    assert abs((erased > 0).double().mean() - (ref > 0).double().mean()) < 0.015
    assert abs(erased.mean() - ref.mean()) / (height * width) < 0.01
    # every mask is one axis-aligned rectangle
    for m in masks[:200]:
        if m.any():
            rows, cols = m.any(1).nonzero().flatten(), m.any(0).nonzero().flatten()
            assert m.sum() == len(rows) * len(cols) and rows.diff().eq(1).all() and cols.diff().eq(1).all()


def test_split_transform_caches_the_deterministic_head():
    head, augment = split_transform(create_transform(False, (24, 24)))
    assert augment is None and head is not None
    head, augment = split_transform(create_transform(True, (24, 24), train_resize="rrc", hflip=0.5,
                                                     random_erasing=0.25))
    assert head is None
    assert [type(op) for op in augment.ops] == [v2.RandomResizedCrop, v2.RandomHorizontalFlip, v2.RandomErasing]
    head, augment = split_transform(create_transform(True, (24, 24), hflip=0.5))
    assert head is not None and [type(op) for op in augment.ops] == [v2.RandomHorizontalFlip]


def _loaders(root, transform, train, **kw):
    dataset = ClassificationDataset(root, "folder", "train", transform=transform)
    std = create_loader(dataset, batch_size=8, workers=0, train=train, seed=3, **kw)
    cached = create_loader(dataset, batch_size=8, workers=0, train=train, seed=3, cache="memory", **kw)
    return std, cached


def test_cached_eval_batches_equal_the_standard_loaders(tiny_data):
    std, cached = _loaders(tiny_data["folder"], create_transform(False, (24, 20)), train=False)
    assert isinstance(cached, CachedLoader) and len(cached) == len(std)
    for (a, ta, ia), (b, tb, ib) in zip(std, cached, strict=True):
        assert b.dtype == torch.uint8 and torch.equal(a, b) and torch.equal(ta, tb) and torch.equal(ia, ib)


def test_cached_train_batches_same_order_and_exact_per_image_policy(tiny_data):
    policy = create_policy("randaugment", randaugment_n=2, randaugment_m=9)
    transform = create_transform(True, (16, 16), policy=policy)  # letterbox head, then the per-image policy
    std, cached = _loaders(tiny_data["folder"], transform, train=True)
    for epoch in (0, 1):
        std.sampler.set_epoch(epoch)
        cached.sampler.set_epoch(epoch)
        for (a, ta, ia), (b, tb, ib) in zip(std, cached, strict=True):
            assert torch.equal(ia, ib) and torch.equal(ta, tb)
            assert torch.equal(a, b)  # same per-sample seeds, so the same RandAugment ops


def test_cached_flip_and_crop_batches(tiny_data):
    transform = create_transform(True, (16, 16), train_resize="rrc", rrc_scale=(1.0, 1.0), hflip=1.0)
    std, cached = _loaders(tiny_data["folder"], create_transform(False, (16, 16)), train=True)
    cached.augment = split_transform(transform)[1]
    cached.sampler.set_epoch(0)
    std.sampler.set_epoch(0)
    for (a, _, ia), (b, _, ib) in zip(std, cached, strict=True):
        assert torch.equal(ia, ib)
        # scale 1 and a square image: the crop is the whole image; every image is flipped
        assert torch.equal(b, a.flip(-1))


def test_cached_loader_resumes_mid_epoch_exactly(tiny_data):
    transform = create_transform(True, (16, 16), train_resize="rrc", rrc_scale=(0.3, 1.0), hflip=0.5,
                                 random_erasing=0.5)
    _, cached = _loaders(tiny_data["folder"], transform, train=True)
    cached.sampler.set_epoch(2)
    full = list(cached)
    cached.sampler.set_epoch(2, start=8)
    rest = list(cached)
    assert len(rest) == len(full) - 1
    for (a, ta, ia), (b, tb, ib) in zip(full[1:], rest, strict=True):
        assert torch.equal(a, b) and torch.equal(ta, tb) and torch.equal(ia, ib)
    cached.sampler.set_epoch(3)
    assert not all(torch.equal(a[0], b[0]) for a, b in zip(full, list(cached)))  # a new epoch, new draws


def test_cache_refuses_a_set_over_the_limit_with_its_size(tiny_data):
    dataset = ClassificationDataset(tiny_data["folder"], "folder", "train", transform=create_transform(False, (16, 16)))
    with pytest.raises(CacheTooLarge, match=r"30 train images .* 3x16x16: 0\.00 GB, over --cache_max_gb 1e-06"):
        create_loader(dataset, batch_size=8, workers=0, train=False, cache="memory", cache_max_gb=1e-6)


def test_cache_reports_or_skips_a_corrupt_image(tiny_data, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(tiny_data["folder"], root)
    bad = root / "train" / "1" / "zz_bad.png"
    bad.write_bytes(b"not a png")
    dataset = ClassificationDataset(root, "folder", "train", transform=create_transform(False, (16, 16)))
    with pytest.raises(Exception, match="zz_bad.png.*--skip_bad_images"):
        create_loader(dataset, batch_size=8, workers=0, train=False, cache="memory")
    dataset.skip_bad = True
    loader = create_loader(dataset, batch_size=8, workers=0, train=False, cache="memory")
    seen = sum(len(t) for _, t, _ in loader)
    assert seen == len(dataset) - 1


def test_batch_augment_keeps_uint8_and_size():
    augment = BatchAugment([v2.RandomResizedCrop((20, 12), antialias=True), v2.RandomHorizontalFlip(0.5),
                            v2.RandomErasing(0.5, value=0)])
    images = torch.randint(0, 256, (9, 3, 40, 30), dtype=torch.uint8)
    out = augment(images, list(range(9)))
    assert out.dtype == torch.uint8 and out.shape == (9, 3, 20, 12)
    assert torch.equal(out, augment(images, list(range(9))))  # a pure function of the seeds


# ----------------------------------------------------------------------------- --gpu_decode's loader
@pytest.mark.parametrize("train", [False, True])
def test_device_decode_loader_equals_the_standard_loader_on_the_cpu(tiny_data, tmp_path, train):
    from dataloader.device_decode import DeviceDecodeLoader
    root = jpeg_copy(tiny_data["folder"], tmp_path / "jpegs")
    (root / "train" / "7" / "extra.png").write_bytes((tiny_data["folder"] / "train" / "7").glob("*.png").__next__()
                                                      .read_bytes())  # a PNG among JPEGs: decoded on the CPU
    transform = create_transform(train, (20, 20), train_resize="rrc", hflip=0.5)
    dataset = ClassificationDataset(root, "folder", "train", transform=transform)
    std = create_loader(dataset, batch_size=8, workers=0, train=train, seed=1)
    dev = create_loader(dataset, batch_size=8, workers=1, train=train, seed=1, decode_on_device=True)
    assert isinstance(dev, DeviceDecodeLoader) and len(dev) == len(std)
    std.sampler.set_epoch(1)
    dev.sampler.set_epoch(1)
    for (a, ta, ia), (b, tb, ib) in zip(std, dev, strict=True):
        assert torch.equal(ia, ib) and torch.equal(ta, tb) and torch.equal(a, b)


def test_device_decode_loader_reports_or_skips_a_corrupt_file(tiny_data, tmp_path):
    root = jpeg_copy(tiny_data["folder"], tmp_path / "jpegs")
    (root / "train" / "1" / "zz_bad.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    dataset = ClassificationDataset(root, "folder", "train", transform=create_transform(False, (16, 16)))
    with pytest.raises(Exception, match="zz_bad.jpg.*--skip_bad_images"):
        list(create_loader(dataset, batch_size=8, workers=0, train=False, decode_on_device=True))
    dataset.skip_bad = True
    loader = create_loader(dataset, batch_size=8, workers=0, train=False, decode_on_device=True)
    assert sum(len(t) for _, t, _ in loader) == len(dataset) - 1


def test_gpu_decode_needs_cuda(tiny_data, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    args = tiny_train_args(tiny_data["folder"], tmp_path, "--gpu_decode")
    assert run_main(args) == 1  # a clear one-line error, not a silent CPU decode


def test_cached_loader_shards_like_the_standard_loader_under_ddp(tiny_data):
    """Each rank's cached loader serves exactly the keys its DistributedSampler-like shard holds: training
    shards are padded to equal length and cover every sample, evaluation shards are disjoint and complete."""
    dataset = ClassificationDataset(tiny_data["folder"], "folder", "train", transform=create_transform(False, (16, 16)))
    for train in (True, False):
        seen = []
        for rank in range(3):
            std = create_loader(dataset, batch_size=4, workers=0, train=train, seed=5, rank=rank, world_size=3)
            cached = create_loader(dataset, batch_size=4, workers=0, train=train, seed=5, rank=rank, world_size=3,
                                   cache="memory")
            std.sampler.set_epoch(1)
            cached.sampler.set_epoch(1)
            a = torch.cat([index for _, _, index in std])
            b = torch.cat([index for _, _, index in cached])
            assert torch.equal(a, b)
            seen.append(b)
        allseen = torch.cat(seen)
        assert set(allseen.tolist()) == set(range(len(dataset)))
        if not train:
            assert len(allseen) == len(dataset)
