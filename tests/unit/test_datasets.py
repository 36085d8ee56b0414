"""dataloader/: the three layouts, their errors, decoding, transforms, the seeded sampler."""
from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dataloader import (
    BatchPreprocessor,
    ClassificationDataset,
    DatasetError,
    Letterbox,
    SeededSampler,
    create_loader,
    create_transform,
    decode_rgb,
    read_class_names,
    resolve_split,
)
from dataloader.datasets import FolderLayout
from dataloader.loader import start_workers
from helpers import TINY_CLASSES, TINY_COUNTS


def test_three_layouts_give_identical_samples(tiny_data):
    sets = {kind: ClassificationDataset(root, kind, "train") for kind, root in tiny_data.items()}
    assert all(s.class_names == list(TINY_CLASSES) for s in sets.values())
    assert all(len(s) == TINY_COUNTS["train"] * len(TINY_CLASSES) for s in sets.values())
    assert sets["folder"].targets == sets["txt"].targets == sets["zip"].targets
    for i in (0, 7, len(sets["folder"]) - 1):
        imgs = [s[i][0] for s in sets.values()]
        assert imgs[0].dtype == torch.uint8 and imgs[0].shape == (3, 16, 16)
        assert torch.equal(imgs[0], imgs[1]) and torch.equal(imgs[0], imgs[2])


def test_zip_is_read_without_extracting_and_reopened_per_process(tiny_data):
    ds = ClassificationDataset(tiny_data["zip"], "zip", "val")
    assert not any(p.suffix == ".png" for p in tiny_data["zip"].rglob("*"))
    loader = create_loader(ds, batch_size=4, workers=2, train=False)
    labels = torch.cat([t for _, t, _ in loader])
    assert labels.tolist() == ds.targets


def copy_data(tiny_data, kind, tmp_path) -> Path:
    dst = tmp_path / kind
    shutil.copytree(tiny_data[kind], dst)
    if kind == "txt":  # txt lists point at the folder dataset's images by relative paths
        shutil.copytree(tiny_data["folder"], tmp_path / "folder")
    return dst


def test_class_in_val_but_not_train_is_an_error(tiny_data, tmp_path):
    root = copy_data(tiny_data, "folder", tmp_path)
    shutil.copytree(root / "val" / "7", root / "val" / "9")
    with pytest.raises(DatasetError, match=r"class '9' in .*val is not a training class"):
        ClassificationDataset(root, "folder", "val")


def test_empty_class_folder_is_an_error(tiny_data, tmp_path):
    root = copy_data(tiny_data, "folder", tmp_path)
    (root / "test" / "1").mkdir(exist_ok=True)
    for f in (root / "test" / "1").iterdir():
        f.unlink()
    with pytest.raises(DatasetError, match=r"class folder .*test/1 holds no images"):
        ClassificationDataset(root, "folder", "test")


@pytest.mark.parametrize("line, message", [
    ("only_a_path.png", r"train.txt:3: malformed line 'only_a_path.png': expected 'path label'"),
    ("x.png seven", r"train.txt:3: label 'seven' is not an integer"),
    ("x.png 3", r"train.txt:3: label 3 is out of range: there are 3 classes"),
    ("x.png 1", r"train.txt:3: image .*x.png' does not exist"),
])
def test_malformed_txt_line_names_file_and_line(tiny_data, tmp_path, line, message):
    root = copy_data(tiny_data, "txt", tmp_path)
    lines = (root / "train.txt").read_text().splitlines()
    lines.insert(2, line)
    (root / "train.txt").write_text("\n".join(lines) + "\n")
    with pytest.raises(DatasetError, match=message):
        ClassificationDataset(root, "txt", "train")


def test_txt_without_classes_file_infers_classes(tiny_data, tmp_path):
    root = copy_data(tiny_data, "txt", tmp_path)
    (root / "classes.txt").unlink()
    assert read_class_names(root, "txt") == ["0", "1", "2"]


@pytest.mark.parametrize("edit, message", [
    (lambda t: t.replace("\t", " ", 1), r"train_map.txt:1: malformed line .*a tab, not spaces"),
    (lambda t: "0/missing.png\t0\n" + t, r"train_map.txt:1: member '0/missing.png' is not in .*train.zip"),
    (lambda t: "../evil.png\t0\n" + t, r"train_map.txt:1: unsafe member path '../evil.png'"),
    (lambda t: "/abs.png\t0\n" + t, r"train_map.txt:1: unsafe member path '/abs.png'"),
])
def test_zip_map_errors_name_file_and_line(tiny_data, tmp_path, edit, message):
    root = copy_data(tiny_data, "zip", tmp_path)
    (root / "train_map.txt").write_text(edit((root / "train_map.txt").read_text()))
    with pytest.raises(DatasetError, match=message):
        ClassificationDataset(root, "zip", "train")


def test_missing_test_split_falls_back_to_val(tiny_data, tmp_path, caplog):
    root = copy_data(tiny_data, "folder", tmp_path)
    shutil.rmtree(root / "test")
    with caplog.at_level(logging.INFO):
        assert resolve_split(root, "folder", "test") == "val"
    assert "no test split" in caplog.text
    with pytest.raises(DatasetError, match="split 'test' not found"):
        ClassificationDataset(root, "folder", "test")


def test_missing_root_is_a_clear_error(tmp_path):
    with pytest.raises(DatasetError, match="dataset root .*nowhere' does not exist"):
        read_class_names(tmp_path / "nowhere", "folder")


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "CMYK", "I;16", "LA"])
def test_every_mode_decodes_to_rgb_uint8(tmp_path, mode):
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 256, (5, 7, 3), dtype=np.uint8))
    img = rgb.convert(mode) if mode != "I;16" else Image.fromarray((np.asarray(rgb.convert("L"), np.uint16) * 257))
    for fmt in ("PNG", "TIFF") if mode != "CMYK" else ("TIFF", "JPEG"):
        path = tmp_path / f"x.{fmt.lower()}"
        try:
            img.save(path, fmt)
        except OSError:
            continue
        out = decode_rgb(path.read_bytes(), str(path))
        assert out.dtype == torch.uint8 and out.shape == (3, 5, 7)
        if mode in ("L", "I;16"):  # grey: the three channels equal the grey level
            grey = torch.from_numpy(np.array(rgb.convert("L")))
            assert torch.equal(out[0], out[1]) and (out[0].int() - grey.int()).abs().max() <= 1


def test_corrupt_image_error_names_the_file(tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(Exception, match="bad.png: cannot decode image"):
        decode_rgb(bad.read_bytes(), str(bad))
    with pytest.raises(Exception, match="empty file"):
        decode_rgb(b"", "zero.png")


def test_letterbox_keeps_aspect_and_centres():
    img = torch.full((3, 10, 20), 200, dtype=torch.uint8)  # H=10, W=20
    out = Letterbox((16, 16))(img)
    assert out.shape == (3, 16, 16)
    # scale = min(16/10, 16/20) = 0.8 -> 8 x 16 content, padded 4 rows above and below
    assert (out[:, :4] == 0).all() and (out[:, 12:] == 0).all() and (out[:, 4:12] == 200).all()


def test_center_crop_eval_geometry():
    img = torch.arange(3 * 40 * 60, dtype=torch.int64).remainder(256).to(torch.uint8).view(3, 40, 60)
    out = create_transform(False, (16, 16), eval_resize="center_crop", crop_pct=0.5)(img)
    assert out.shape == (3, 16, 16)


def test_seeded_sampler_order_is_a_function_of_seed_and_epoch():
    a, b = SeededSampler(50, shuffle=True, seed=3), SeededSampler(50, shuffle=True, seed=3)
    a.set_epoch(2), b.set_epoch(2)
    assert list(a) == list(b)
    b.set_epoch(3)
    assert [i for i, _ in a] != [i for i, _ in b]
    assert sorted(i for i, _ in a) == list(range(50))
    shards = [list(SeededSampler(11, shuffle=True, seed=0, rank=r, world_size=2)) for r in range(2)]
    assert len(shards[0]) == len(shards[1]) == 6
    assert set(i for s in shards for i, _ in s) == set(range(11))


def test_augmentation_does_not_depend_on_worker_count(tiny_data):
    transform = create_transform(True, (16, 16), train_resize="rrc", rrc_scale=(0.3, 1.0), hflip=0.5)
    ds = ClassificationDataset(tiny_data["folder"], "folder", "train", transform=transform)
    batches = []
    for workers in (0, 2):
        loader = create_loader(ds, batch_size=8, workers=workers, train=True, seed=5)
        loader.sampler.set_epoch(1)
        batches.append(torch.cat([x for x, _, _ in loader]))
    assert torch.equal(batches[0], batches[1])
    loader.sampler.set_epoch(2)
    assert not torch.equal(batches[0], torch.cat([x for x, _, _ in loader]))


def test_batch_preprocessor_normalises_like_torchvision():
    from torchvision.transforms import v2
    x = torch.randint(0, 256, (2, 3, 4, 5), dtype=torch.uint8)
    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    ref = v2.Normalize(mean, std)(x.float() / 255)
    out = BatchPreprocessor(mean, std, torch.device("cpu"))(x)
    assert torch.allclose(out, ref, atol=1e-5)


def test_folder_order_is_sorted_and_recursive(tmp_path):
    root = tmp_path / "d"
    for rel in ["train/a/z.png", "train/a/sub/b.png", "train/a/c.png", "train/b/x.jpg"]:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (4, 4)).save(root / rel)
    samples = FolderLayout.samples(root, "train", ["a", "b"])
    assert [Path(p).relative_to(root).as_posix() for p, _ in samples] == \
        ["train/a/c.png", "train/a/z.png", "train/a/sub/b.png", "train/b/x.jpg"]


def test_start_workers_forks_early_and_the_first_epoch_is_unchanged(tiny_data):
    """Workers started before the first epoch (while the trainer is small, avoiding copy-on-write of a
    large heap) are the ones the loader then uses, and the batches they prefetched early are dropped:
    every epoch yields exactly what a loader started at its first use yields."""
    ds = ClassificationDataset(tiny_data["folder"], "folder", "train",
                               transform=create_transform(True, (16, 16), train_resize="rrc", hflip=0.5))
    early, late = (create_loader(ds, batch_size=8, workers=2, train=True, seed=5) for _ in range(2))
    start_workers(early)
    workers = early._iterator._workers
    assert len(workers) == 2 and all(w.is_alive() for w in workers)
    for epoch in (0, 1):
        early.sampler.set_epoch(epoch)
        late.sampler.set_epoch(epoch)
        for (a, ta, ia), (b, tb, ib) in zip(early, late, strict=True):
            assert torch.equal(a, b) and torch.equal(ta, tb) and torch.equal(ia, ib)
    assert early._iterator._workers == workers  # the same processes served both epochs
    start_workers(create_loader(ds, batch_size=8, workers=0, train=False))  # no workers: nothing to start


def test_a_skipped_bad_image_is_warned_once_however_often_it_is_read(tiny_data, tmp_path, caplog):
    """The preview grid, every epoch and the cache read a bad file again: one warning, not one per read."""
    root = shutil.copytree(tiny_data["folder"], tmp_path / "data")
    (root / "train" / "0" / "0000_bad.png").write_bytes(b"not an image")
    ds = ClassificationDataset(root, "folder", "train", skip_bad=True)
    bad = next(i for i, (path, _) in enumerate(ds.samples) if path.endswith("0000_bad.png"))
    with caplog.at_level(logging.WARNING):
        assert [ds[bad], ds[(bad, 7)], ds[bad]] == [None, None, None]
    assert caplog.text.count("skipping") == 1 and "0000_bad.png: cannot decode image" in caplog.text
    assert " at 0x" not in caplog.text


@pytest.mark.parametrize("cache", ["none", "memory"])
def test_loaders_never_draw_from_torchs_global_generator(tiny_data, cache):
    """Building a loader and iterating it leaves torch's global RNG as it was: the state a run saves in the
    middle of an epoch is then the state a run never stopped has at that step (a draw per epoch iterator put
    every dropout mask after a mid-epoch resume one number off)."""
    transform = create_transform(True, (16, 16), train_resize="rrc", hflip=0.5)
    ds = ClassificationDataset(tiny_data["folder"], "folder", "train", transform=transform)
    before = torch.get_rng_state()
    loader = create_loader(ds, batch_size=8, workers=0, train=True, seed=5, cache=cache)
    for epoch in (0, 1):
        loader.sampler.set_epoch(epoch)
        assert sum(len(x) for x, _, _ in loader) == len(ds)
    assert torch.equal(torch.get_rng_state(), before)
