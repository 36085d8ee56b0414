"""WebDataset shards (dataloader/shards.py): the writer's files and _info.json, how an epoch is cut across ranks
and workers (hand-computed), the mid-epoch resume plan, the loader's batches, and each bad input's one message."""
from __future__ import annotations

import io
import json
import tarfile
from collections import Counter
from pathlib import Path

import pytest
import torch
from PIL import Image

from dataloader import shards
from dataloader.checking import check_dataset
from dataloader.shards import (
    Shard,
    ShardDataset,
    ShardError,
    ShardLoader,
    ShardSet,
    iter_samples,
    rank_pieces,
    worker_consumed,
    write_wds_split,
)


def png(value: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (value, value, value)).save(buf, "PNG")
    return buf.getvalue()


def records(n: int, classes: int = 3) -> list[tuple[str, bytes, int]]:
    return [(f"s{i:03d}", png(i * 7 % 256), i % classes) for i in range(n)]


@pytest.fixture
def small(tmp_path) -> Path:
    """train: 23 samples in shards of 5 (5, 5, 5, 5, 3); val: 7 in 2 shards; 3 classes."""
    write_wds_split(tmp_path, "train", records(23), ["a", "b", "c"], 2, max_samples=5)
    write_wds_split(tmp_path, "val", records(7), ["a", "b", "c"], 1, max_samples=5)
    return tmp_path


def test_writer_makes_timm_info_and_readable_shards(small):
    info = json.loads((small / "_info.json").read_text())
    assert info["classes"] == ["a", "b", "c"] and info["num_classes"] == 3
    train = info["splits"]["train"]
    assert train["filenames"] == [f"train-{i:06d}.tar" for i in range(5)]
    assert train["shard_lengths"] == [5, 5, 5, 5, 3] and train["num_samples"] == 23
    assert info["splits"]["validation"]["shard_lengths"] == [5, 2]  # timm's name of the val split
    got = [s for f in train["filenames"] for s in iter_samples(str(small / f))]
    assert got == records(23)  # keys, bytes and labels round-trip in order


def test_rewriting_a_split_removes_its_stale_shards(small):
    (small / "train-backup.tar").write_bytes(b"a user's own file")  # not a name this writer gives: kept
    write_wds_split(small, "train", records(4), ["a", "b", "c"], 1, max_samples=100)
    assert sorted(p.name for p in small.glob("train-*.tar")) == ["train-000000.tar", "train-backup.tar"]
    assert json.loads((small / "_info.json").read_text())["splits"]["validation"]["num_samples"] == 7


def test_the_shard_size_is_an_argument_of_each_write_not_a_global(tmp_path, tiny_data):
    """Writes with different limits in one process (the writer, the folder writer of make_digits, the converter)
    each cut their own shards; the default is DEFAULT_SHARD_SAMPLES; a limit below 1 is one error."""
    from dataloader.convert import convert_dataset
    from dataloader.layout_writers import write_wds_shards

    def lengths(root: Path, split: str = "train") -> list[int]:
        return json.loads((root / "_info.json").read_text())["splits"][split]["shard_lengths"]
    write_wds_split(tmp_path / "five", "train", records(23), ["a", "b", "c"], 1, max_samples=5)
    write_wds_split(tmp_path / "ten", "train", records(23), ["a", "b", "c"], 2, max_samples=10)
    write_wds_split(tmp_path / "default", "train", records(23), ["a", "b", "c"], 1)
    assert (lengths(tmp_path / "five"), lengths(tmp_path / "ten")) == ([5, 5, 5, 5, 3], [10, 10, 3])
    assert lengths(tmp_path / "default") == [23] and shards.DEFAULT_SHARD_SAMPLES == 1000
    folder = Path(tiny_data["folder"])  # 30 train images
    write_wds_shards(folder, tmp_path / "folder7", max_samples=7)
    convert_dataset(folder, "folder", "wds", tmp_path / "converted4", shard_samples=4)
    assert lengths(tmp_path / "folder7") == [7, 7, 7, 7, 2] and lengths(tmp_path / "converted4") == [4] * 7 + [2]
    with pytest.raises(ShardError, match=r"^a shard holds at least one sample, got at most 0 \(--shard_samples\)$"):
        write_wds_split(tmp_path / "zero", "train", records(3), ["a", "b", "c"], 1, max_samples=0)
    with pytest.raises(shards.DatasetError, match=r"^--shard_samples cuts wds output into shards; --to parquet has "
                                                  r"none: drop it$"):
        convert_dataset(folder, "folder", "parquet", tmp_path / "pq", shard_samples=4)
    from utils import convert_data  # the command line passes its --shard_samples down
    assert convert_data.main(["--data", str(folder), "--to", "wds", "--out", str(tmp_path / "cli"), "-j", "1",
                              "--shard_samples", "6", "--no_progress"]) == 0
    assert lengths(tmp_path / "cli") == [6] * 5


def test_shards_without_info_are_found_and_counted(small):
    (small / "_info.json").unlink()
    found = ShardSet(small)
    assert [s.count for s in found.shards("train")] == [5, 5, 5, 5, 3]
    assert found.exists("val") and not found.exists("test")
    assert found.classes() == ["0", "1", "2"]  # no classes anywhere: 0..max train label
    (small / "classes.txt").write_text("cat\ndog\nfox\n")
    assert ShardSet(small).classes() == ["cat", "dog", "fox"]  # a classes.txt beside the shards


def test_brace_pattern_names_the_shards(small):
    pattern = f"{small}/{{train-{{000000..000001}},val-000001}}.tar"
    found = ShardSet(pattern)
    assert [Path(s.url).name for s in found.shards("train")] == ["train-000000.tar", "train-000001.tar"]
    assert [s.count for s in found.shards("val")] == [2]


def shard_list(counts):
    return shards._with_offsets([f"s{i}" for i in range(len(counts))], counts)


def test_rank_pieces_by_hand():
    s = shard_list([5, 5, 3])  # 13 samples
    # training, 2 ranks: 6 each (the 13th left out); order 2, 0, 1 -> samples of s2 (3), s0 (5), s1 (5)
    assert rank_pieces(s, [2, 0, 1], 0, 2, train=True) == [(2, 0, 3), (0, 0, 3)]
    assert rank_pieces(s, [2, 0, 1], 1, 2, train=True) == [(0, 3, 5), (1, 0, 4)]
    # evaluation, 2 ranks: 7 + 6, every sample once
    assert rank_pieces(s, [0, 1, 2], 0, 2, train=False) == [(0, 0, 5), (1, 0, 2)]
    assert rank_pieces(s, [0, 1, 2], 1, 2, train=False) == [(1, 2, 5), (2, 0, 3)]


@pytest.mark.parametrize("world", [1, 2, 3, 4])
def test_ranks_are_disjoint_and_equal(world):
    s = shard_list([7, 3, 9, 1, 6])
    taken = Counter()
    for rank in range(world):
        pieces = rank_pieces(s, [3, 1, 4, 0, 2], rank, world, train=True)
        assert sum(hi - lo for _, lo, hi in pieces) == 26 // world
        taken.update(s[i].offset + p for i, lo, hi in pieces for p in range(lo, hi))
    assert max(taken.values()) == 1 and len(taken) == world * (26 // world)


def test_worker_consumed_follows_the_dataloaders_turns():
    # two workers with 7 and 3 samples, chunks of 2: w0 2, w1 2, w0 2, w1 1, w0 2, w0 1
    assert worker_consumed([7, 3], 2, 4) == [2, 2]
    assert worker_consumed([7, 3], 2, 7) == [4, 3]
    assert worker_consumed([7, 3], 2, 9) == [6, 3]
    assert worker_consumed([7, 3], 2, 10) == [7, 3]


def loader_keys(data, *, rank=0, world=1, batch=4, epoch=0, start=0, train=True):
    dataset = ShardDataset(data, "train", ["a", "b", "c"], transform=None, train=train, seed=5)
    loader = ShardLoader(dataset, batch_size=batch, workers=0, train=train, rank=rank, world_size=world)
    loader.sampler.set_epoch(epoch, start)
    batches = list(loader)
    return loader, batches, [int(i) for _, _, index in batches for i in index]


def test_loader_batches_and_epochs(small):
    loader, batches, indices = loader_keys(small, world=1, batch=4)
    assert [len(b[1]) for b in batches] == [4, 4, 4, 4, 4, 3] and len(loader) == 6  # batch_sizes() agrees
    assert sorted(indices) == list(range(23))
    _, _, again = loader_keys(small, world=1, batch=4)
    _, _, other = loader_keys(small, world=1, batch=4, epoch=1)
    assert indices == again and indices != other  # a pure function of (seed, epoch)
    assert torch.equal(batches[0][0][0], ShardDataset(small, "train", ["a", "b", "c"]).load(indices[0]))


def test_an_epoch_of_shards_leaves_the_global_rng_alone(small):
    # A run resumed mid-epoch restores the global RNG; an epoch that drew from it would shift every dropout draw.
    before = torch.get_rng_state()
    loader_keys(small, world=1, batch=4)
    assert torch.equal(torch.get_rng_state(), before)


def test_two_ranks_read_disjoint_halves(small):
    halves = [set(loader_keys(small, rank=r, world=2)[2]) for r in (0, 1)]
    assert len(halves[0]) == len(halves[1]) == 11 and not halves[0] & halves[1]


def test_resume_skips_the_shards_read_and_keeps_the_epoch_length(small, caplog):
    _, _, whole = loader_keys(small, batch=4)
    with caplog.at_level("INFO"):
        loader, batches, rest = loader_keys(small, batch=4, start=12)
    assert len(rest) == 23 - 12 and len(loader) == 3  # the rest of the epoch, to the sample
    dataset = loader.dataset
    plans, again = dataset.resume_plan()
    assert again < 5 + shards.SHUFFLE_BUFFER  # within one shard (+ the buffer) of where it stopped
    assert "resuming epoch 1 of the shards at sample 12" in caplog.text


def write_tar(path: Path, members: dict[str, bytes]) -> None:
    with tarfile.open(path, "w") as tar:
        for name, body in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(body)
            tar.addfile(info, io.BytesIO(body))


def test_bad_shards_are_one_message_each(tmp_path, small):
    write_tar(tmp_path / "nocls.tar", {"a.png": png(1), "a.cls": b"0", "b.png": png(2)})
    with pytest.raises(ShardError, match=r"nocls\.tar: sample 'b' has no \.cls label"):
        list(iter_samples(str(tmp_path / "nocls.tar")))
    data = (small / "train-000000.tar").read_bytes()
    (tmp_path / "cut.tar").write_bytes(data[:512 + 40])  # inside the first member's bytes
    with pytest.raises(ShardError, match=r"cut\.tar: not a readable tar file .* truncated or damaged"):
        list(iter_samples(str(tmp_path / "cut.tar")))
    (small / "train-000001.tar").write_bytes(data[:4 * 1024])  # at a member boundary: 2 samples of 5 are left
    with pytest.raises(ShardError, match=r"train-000001\.tar: not a readable tar file \(it holds 2 samples where "
                                         r"5 were counted\); the shard is truncated"):
        loader_keys(small)
    with pytest.raises(ShardError, match=r"split 'test' not found .* \(splits there: train, validation\)"):
        ShardSet(small).shards("test")
    (small / "train-000003.tar").unlink()
    with pytest.raises(ShardError, match=r"_info\.json: shard \S*train-000003\.tar of split 'train' does not exist"):
        ShardSet(small).shards("train")


def test_check_images_names_the_bad_shard(small):
    data = (small / "train-000001.tar").read_bytes()
    (small / "train-000001.tar").write_bytes(data[:4 * 1024])  # 2 samples of 5 left
    findings = check_dataset(small)  # detected: _info.json
    bad = [f for f in findings if f.status == "bad"]
    assert len(bad) == 1 and bad[0].source.endswith("train-000001.tar") and "truncated" in bad[0].reason
    assert sum(f.status == "ok" for f in findings) == 23 - 3 + 7
    pattern = f"{small}/{{train-{{000000..000004}},val-000000}}.tar"  # a brace pattern, no --dataset: shards
    found = check_dataset(pattern)  # was a FileNotFoundError: the pattern was taken for a folder
    assert found and all(".tar:" in f.source for f in found)  # each sample of the named shards checked


def test_refused_options_say_why(small):
    dataset = ShardDataset(small, "train", ["a", "b", "c"], train=True)
    with pytest.raises(ShardError, match="class-balanced sampling .* add --cache_dataset memory"):
        shards.shard_loader(dataset, batch_size=4, workers=0, train=True, rank=0, world_size=1, pin_memory=False,
                            class_balanced=True, decode_on_device=False)
    with pytest.raises(ShardError, match=r"repeated augmentation \(--repeated_aug\) draws samples by index.* add "
                                         r"--cache_dataset memory"):
        shards.shard_loader(dataset, batch_size=4, workers=0, train=True, rank=0, world_size=1, pin_memory=False,
                            class_balanced=False, decode_on_device=False, repeated_aug=3)
    with pytest.raises(ShardError, match="--gpu_decode reads samples by index"):
        shards.shard_loader(dataset, batch_size=4, workers=0, train=True, rank=0, world_size=1, pin_memory=False,
                            class_balanced=False, decode_on_device=True)
    with pytest.raises(ShardError, match="labels of a split are not known up front.* --cache_dataset memory"):
        dataset.targets


def record_of(image: torch.Tensor) -> int:
    """The record number ``i`` of a :func:`records` image (its grey level is ``i * 7 % 256``, distinct for i < 37)."""
    return int(image[0, 0, 0]) // 7


@pytest.mark.parametrize("workers", [0, 2])
def test_key_of_the_yielded_index_names_the_sample_in_every_epoch_rank_and_worker(small, workers):
    """The index a ShardDataset yields with a sample is its place in the split's file order, whatever the epoch's
    shuffle, rank or worker: ``key(index)`` names that very sample (side files are keyed by it)."""
    expected = {f"train-{i // 5:06d}.tar/s{i:03d}": i for i in range(23)}
    for epoch, rank in ((0, 0), (1, 1)):
        dataset = ShardDataset(small, "train", ["a", "b", "c"], train=True, seed=5)
        loader = ShardLoader(dataset, batch_size=4, workers=workers, train=True, rank=rank, world_size=2)
        loader.sampler.set_epoch(epoch)
        seen = [(dataset.key(int(i)), record_of(image), int(label))
                for images, labels, indices in loader for image, label, i in zip(images, labels, indices)]
        assert len(seen) == 11 and all(expected[key] == i and label == i % 3 for key, i, label in seen)
    assert [dataset.key(i) for i in range(23)] == list(expected)  # split order: file order, position in shard
    assert dataset.targets == [i % 3 for i in range(23)]  # known now that the keys read the split


def cached_indices(data, *, rank, world, epoch, workers=0, **kw):
    from dataloader.loader import create_loader
    dataset = ShardDataset(data, "train", ["a", "b", "c"], train=True, seed=5)
    loader = create_loader(dataset, batch_size=4, workers=workers, train=True, seed=5, rank=rank, world_size=world,
                           cache="memory", **kw)
    loader.sampler.set_epoch(epoch)
    batches = list(loader)
    for images, labels, indices in batches:  # every cached row is its index's sample, with its label
        assert [record_of(im) for im in images] == indices.tolist() and labels.tolist() == (indices % 3).tolist()
    return dataset, loader, [int(i) for _, _, index in batches for i in index]


def test_memory_cache_on_shards_reads_the_split_once_then_serves_seeded_epochs(small):
    """--cache_dataset memory on shards: one pass (2 workers, each reading whole shards) fills every row at its
    split index and records keys and labels; epochs are seeded shuffles; 2 ranks take 11 each, disjoint (the
    23rd left out, a different one each epoch): no sample twice in an epoch, as when streamed."""
    dataset, loader, _ = cached_indices(small, rank=0, world=1, epoch=0, workers=2)
    assert dataset.samples == ShardDataset(small, "train", ["a", "b", "c"]).samples  # recorded = streamed read
    assert bool(loader.cache.valid.all()) and loader.cache.targets.tolist() == [i % 3 for i in range(23)]
    left_out = []
    for epoch in (0, 1):
        halves = [cached_indices(small, rank=r, world=2, epoch=epoch)[2] for r in (0, 1)]
        assert len(halves[0]) == len(halves[1]) == 11 and not set(halves[0]) & set(halves[1])
        left_out.append(set(range(23)) - set(halves[0]) - set(halves[1]))
        assert halves[0] == cached_indices(small, rank=0, world=2, epoch=epoch, workers=2)[2]  # seeded: same again
    assert left_out[0] != left_out[1] and all(len(rest) == 1 for rest in left_out)
    # with the labels known, class-balanced sampling works on cached shards
    _, balanced, drawn = cached_indices(small, rank=0, world=1, epoch=0, class_balanced=True)
    assert type(balanced.sampler).__name__ == "ClassBalancedSampler" and len(drawn) == 23
    # and so does repeated augmentation (refused when streamed): each drawn sample twice in a row
    _, repeated, drawn = cached_indices(small, rank=0, world=1, epoch=0, repeated_aug=2)
    assert type(repeated.sampler).__name__ == "RepeatedAugSampler" and len(drawn) == 23
    assert drawn[0:22:2] == drawn[1:22:2] and len(set(drawn)) == 12  # the 23rd: the first of the next pair


def test_memory_cache_on_shards_refuses_a_split_over_the_limit(small):
    from dataloader.cache import CacheTooLarge
    from dataloader.loader import create_loader
    dataset = ShardDataset(small, "train", ["a", "b", "c"], train=True)
    with pytest.raises(CacheTooLarge, match=r"the 23 train images .* over --cache_max_gb 1e-06"):
        create_loader(dataset, batch_size=4, workers=0, train=True, cache="memory", cache_max_gb=1e-6)
    assert "samples" not in dataset.__dict__  # refused from the counts, before reading the split


def test_sample_seed_is_a_pure_function_of_seed_epoch_key():
    assert shards.sample_seed(1, 2, "k") == shards.sample_seed(1, 2, "k")
    assert len({shards.sample_seed(1, e, "k") for e in range(5)}) == 5
    assert isinstance(Shard("u", 1, 0).count, int)


def test_fsspec_url_reads_like_the_folder(small):
    """An fsspec URL (file:// here; s3://, gs://... alike with their packages) lists, counts and streams the
    same samples in the same order as the local folder."""
    url = f"file://{small}"
    assert [s.count for s in ShardSet(url).shards("train")] == [5, 5, 5, 5, 3]
    assert ShardSet(url).classes() == ["a", "b", "c"]
    assert loader_keys(url)[2] == loader_keys(small)[2]
    (small / "_info.json").unlink()  # listed through fsspec's glob instead
    assert [Path(s.url).name for s in ShardSet(url).shards("val")] == ["val-000000.tar", "val-000001.tar"]


def test_a_bad_image_is_skipped_with_skip_bad_images_else_named(tmp_path):
    bad = [("s000", b"\x89PNG\r\n\x1a\n not really", 0), *records(9)[1:]]
    write_wds_split(tmp_path, "train", bad, ["a", "b", "c"], 1)
    dataset = ShardDataset(tmp_path, "train", ["a", "b", "c"], skip_bad=True)
    loader = ShardLoader(dataset, batch_size=4, workers=0, train=False)
    sizes = [len(target) for _, target, _ in loader]
    assert sizes == [3, 4, 1] and len(loader) == 3  # batches of 4 consumed samples, the bad one left out
    from dataloader.io import ImageDecodeError
    strict = ShardLoader(ShardDataset(tmp_path, "train", ["a", "b", "c"]), batch_size=4, workers=0, train=False)
    with pytest.raises(ImageDecodeError, match=r"train-000000\.tar/s000.*--skip_bad_images"):
        list(strict)


def test_shards_decode_to_the_runs_pixel_format(small):
    from dataloader.io import PixelFormat
    grey = ShardDataset(small, "train", ["a", "b", "c"], pixels=PixelFormat(1, 8))
    assert grey.load(0).shape == (1, 8, 8) and ShardDataset(small, "train", ["a", "b", "c"]).load(0).shape == (3, 8, 8)
    image, _, _ = grey.first_items(1)[0]
    assert image.shape[0] == 1


def test_convert_data_to_wds_keeps_every_image_and_mixes_classes_in_each_shard(tiny_data, tmp_path, monkeypatch):
    """``utils/convert_data.py --to wds``: every image of the folders lands in the shards byte for byte with its
    label, keys lose their dots (``0/3.png`` -> ``0/3_png``), and the seeded shuffled order puts more than one
    class in each shard (the folders' order is class by class)."""
    from dataloader.convert import convert_dataset
    from dataloader.datasets import get_layout, sample_key
    root = Path(tiny_data["folder"])
    out = convert_dataset(root, "folder", "wds", tmp_path / "wds", jobs=2, shard_samples=8)
    layout = get_layout("folder")
    names = layout.classes(root)
    assert ShardSet(str(out)).classes() == names
    for split in ("train", "val"):
        expected = {sample_key(root, "folder", split, source).replace(".", "_"): (Path(source).read_bytes(), label)
                    for source, label in layout.samples(root, split, names)}
        got = {}
        for shard in ShardSet(str(out)).shards(split):
            samples = list(iter_samples(shard.url))
            assert all("." not in key.rsplit("/", 1)[-1] for key, _, _ in samples)
            if len(samples) > 3:
                assert len({label for _, _, label in samples}) > 1, shard.url
            got.update({key: (data, label) for key, data, label in samples})
        assert got == expected
    with pytest.raises(shards.DatasetError, match=r"--dataset wds is streamed, not read by index"):  # one line
        convert_dataset(out, "wds", "parquet", tmp_path / "parquet")
    assert not (tmp_path / "parquet").exists() and not (tmp_path / ".parquet.partial").exists()


def test_side_files_live_in_the_shards_folder(small, tmp_path):
    """--knowledge / --make_curriculum files go beside the shards: the folder, a brace pattern's folder; a URL has
    none, and the error names the flags that name the files instead."""
    assert shards.side_folder(str(small), "wds") == small
    assert shards.side_folder(f"{small}/{{train-{{000000..000004}},val-000000}}.tar", "wds") == small
    assert shards.side_folder("data/x", "folder") == Path("data/x")
    with pytest.raises(ShardError, match="shards at a URL do not have: name them with --distill_files"):
        shards.side_folder("http://127.0.0.1:1/shards", "wds")
    hub = tmp_path / "user" / "digits"  # a Hub name, not a folder here
    with pytest.raises(shards.DatasetError, match="which a Hub name does not have: name them with --distill_files"):
        shards.side_folder(str(hub), "hf")
    assert shards.side_folder(str(small), "hf") == small  # a save_to_disk / parquet folder holds them


SETS = [(0, 2), (1,), (0, 1, 2), (2,), (1, 2), (0,), (0, 2)]


def set_records(n: int) -> list[tuple[str, bytes, tuple[int, ...]]]:
    return [(f"m{i:03d}", png(i * 7 % 256), SETS[i % len(SETS)]) for i in range(n)]


def expected_multi_hot(indices: torch.Tensor) -> torch.Tensor:
    """The multi-hot rows of split indices ``indices`` of :func:`set_records`, written by hand."""
    rows = torch.zeros(len(indices), 3)
    for row, i in enumerate(indices.tolist()):
        rows[row, list(SETS[i % len(SETS)])] = 1.0
    return rows


@pytest.fixture
def multi(tmp_path) -> Path:
    """Multi-label shards: train 13 samples (shards of 5) with label sets written as .cls 1,4."""
    write_wds_split(tmp_path, "train", set_records(13), ["a", "b", "c"], 1, max_samples=5)
    return tmp_path


@pytest.mark.parametrize("workers", [0, 2])
def test_label_sets_round_trip_and_batches_carry_multi_hot_targets(multi, workers):
    from dataloader.labels import LabelSets
    assert (multi / "train-000000.tar").is_file()
    with tarfile.open(multi / "train-000000.tar") as tar:
        assert tar.extractfile("m000.cls").read() == b"0,2"  # the writer's .cls of a label set
    got = [s for f in sorted(multi.glob("train-*.tar")) for s in iter_samples(str(f), LabelSets())]
    assert got == set_records(13)
    dataset = ShardDataset(multi, "train", ["a", "b", "c"], train=True, seed=3, sets=LabelSets())
    loader = ShardLoader(dataset, batch_size=4, workers=workers, train=True)
    batches = list(loader)
    assert [len(b[2]) for b in batches] == [4, 4, 4]  # 13 % 4 == 1: a batch of one is dropped in training
    for images, targets, indices in batches:
        assert targets.dtype == torch.float32 and targets.shape == (len(indices), 3)
        assert torch.equal(targets, expected_multi_hot(indices))
        assert [record_of(im) for im in images] == indices.tolist()
    assert dataset.samples[2] == ("train-000000.tar/m002", (0, 1, 2))
    assert dataset[2][1].tolist() == [1.0, 1.0, 1.0]  # by index too (the CAM's picks, labels known), multi-hot
    with pytest.raises(ShardError, match=r"m000\.cls is not a class index; several labels are a multi-label "
                                         r"dataset: add --multi_label"):
        list(ShardDataset(multi, "train", ["a", "b", "c"]).first_items(1))


def test_memory_cache_on_label_set_shards_gives_multi_hot_rows(multi):
    from dataloader.labels import LabelSets
    from dataloader.loader import create_loader
    dataset = ShardDataset(multi, "train", ["a", "b", "c"], train=True, seed=5, sets=LabelSets())
    loader = create_loader(dataset, batch_size=4, workers=0, train=True, seed=5, cache="memory")
    assert dataset.targets == [SETS[i % len(SETS)] for i in range(13)]
    assert torch.equal(loader.cache.targets, expected_multi_hot(torch.arange(13)))
    for images, targets, indices in loader:
        assert torch.equal(targets, expected_multi_hot(indices))


def test_json_labels_empty_sets_and_bad_sets_name_the_sample(tmp_path):
    from dataloader.labels import LabelSets
    write_tar(tmp_path / "j.tar", {"a.png": png(1), "a.json": b'{"labels": [4, 1]}',
                                   "b.png": png(2), "b.cls": b""})
    with pytest.raises(ShardError, match=r"j\.tar: sample 'b' \(b\.cls\): no label: .*--allow_empty_labels"):
        list(iter_samples(str(tmp_path / "j.tar"), LabelSets()))
    got = [(key, label) for key, _, label in iter_samples(str(tmp_path / "j.tar"), LabelSets(allow_empty=True))]
    assert got == [("a", (1, 4)), ("b", ())]
    for body, match in ((b'{"label": 1}', r"\(c\.json\): no 'labels' list"), (b"{", r"\(c\.json\): not valid JSON"),
                        (b'{"labels": [1, "x"]}', r"\(c\.json\): label 'x' is not a class index")):
        write_tar(tmp_path / "bad.tar", {"c.png": png(3), "c.json": body})
        with pytest.raises(ShardError, match=match):
            list(iter_samples(str(tmp_path / "bad.tar"), LabelSets()))
    write_tar(tmp_path / "train-000000.tar", {"d.png": png(3), "d.cls": b"0 3"})
    assert ShardSet(tmp_path).classes() == ["0", "1", "2", "3"]  # no _info.json: 0..largest index of the sets
    dataset = ShardDataset(tmp_path, "train", ["0", "1"], sets=LabelSets())
    with pytest.raises(ShardError, match=r"sample 'd': label 3 is out of range: there are 2 classes"):
        dataset.first_items(1)


def test_check_images_reads_label_set_shards_with_multi_label(multi):
    from dataloader import Columns
    from dataloader.labels import LabelSets
    findings = check_dataset(str(multi), "wds", columns=Columns(sets=LabelSets()))
    assert [f.status for f in findings] == ["ok"] * 13 and findings[0].label == "a c"  # m000: {0, 2}
    plain = check_dataset(str(multi), "wds")
    bad = [f for f in plain if f.status == "bad"]  # one per shard, at its first label set (m000, m006, m011)
    assert len(bad) == 3 and all("add --multi_label" in f.reason for f in bad)
