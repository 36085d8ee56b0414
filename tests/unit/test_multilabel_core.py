"""The multi-label core: label sets read from csv/jsonl/txt/zip tables (dataloader/labels.py, datasets.py), the
multi-hot batches, top-k on label sets, the spec's thresholds, the task taken from a checkpoint and best.pth
chosen by val mAP."""
from __future__ import annotations

import json
import logging
import re
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from config.saved import use_checkpoint_task
from dataloader.datasets import ClassificationDataset, Columns, DatasetError, read_class_names
from dataloader.labels import LabelSets, class_counts, label_names, multi_hot, target_tensor
from engine.epoch_end import EpochEnd
from engine.state import CheckpointSaver
from models.spec import ModelSpec
from utils.metrics import topk_hits

SETS = Columns(sets=LabelSets())


def _images(root: Path, n: int) -> list[str]:
    (root / "img").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.fromarray(np.full((6, 6, 3), 20 * i, np.uint8)).save(root / "img" / f"{i}.png")
    return [f"img/{i}.png" for i in range(n)]


def _csv(root: Path, split: str, rows: list[tuple[str, str]]) -> None:
    (root / f"{split}.csv").write_text("path,label\n" + "".join(f"{p},{label}\n" for p, label in rows))


def test_label_sets_split_on_spaces_and_commas_or_the_given_delimiter():
    assert LabelSets().split(" cat, dog  bird ") == ["cat", "dog", "bird"]
    assert LabelSets(";").split("golden retriever;cat") == ["golden retriever", "cat"]
    assert LabelSets().split(["a", 3]) == ["a", "3"] and LabelSets().split("") == []


def test_multi_hot_targets_counts_and_names():
    assert multi_hot((0, 2), 4).tolist() == [1.0, 0.0, 1.0, 0.0] and multi_hot((), 3).tolist() == [0.0] * 3
    matrix = target_tensor([(0, 2), (), (1,)], 3)
    assert matrix.dtype == torch.float32 and matrix.tolist() == [[1, 0, 1], [0, 0, 0], [0, 1, 0]]
    assert target_tensor([2, 0], 3).tolist() == [2, 0]  # single-label: class indices
    assert class_counts([(0, 2), (2,), ()]) == {0: 1, 2: 2} and class_counts([1, 1, 0]) == {1: 2, 0: 1}
    assert label_names(torch.tensor([0.0, 1.0, 1.0]), ["a", "b", "c"]) == "b c"
    assert label_names((), ["a"]) == "(none)" and label_names(1, ["a", "b"]) == "b"


def test_csv_label_sets_read_as_multi_hot_batches(tmp_path):
    paths = _images(tmp_path, 4)
    _csv(tmp_path, "train", [(paths[0], "dog cat"), (paths[1], "bird"), (paths[2], "\"cat,bird\"")])
    _csv(tmp_path, "val", [(paths[3], "dog")])
    names = read_class_names(tmp_path, "csv", SETS)
    assert names == ["bird", "cat", "dog"]  # the union over train, sorted
    train = ClassificationDataset(tmp_path, "csv", "train", names, columns=SETS)
    assert train.multi_label and train.targets == [(1, 2), (0,), (0, 1)]
    image, target, index = train[0]
    assert target.tolist() == [0.0, 1.0, 1.0] and index == 0 and image.dtype == torch.uint8
    batch = torch.utils.data.DataLoader(train, batch_size=3)
    assert next(iter(batch))[1].shape == (3, 3)


def test_jsonl_label_lists_and_empty_sets(tmp_path):
    paths = _images(tmp_path, 3)
    rows = [{"path": paths[0], "label": ["a", "b"]}, {"path": paths[1], "label": []}, {"path": paths[2], "label": "b"}]
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(DatasetError, match=r"train\.jsonl:2: no label: with --multi_label an image without labels"):
        ClassificationDataset(tmp_path, "csv", "train", ["a", "b"], columns=SETS)
    allowed = Columns(sets=LabelSets(allow_empty=True))
    assert ClassificationDataset(tmp_path, "csv", "train", ["a", "b"], columns=allowed).targets == [(0, 1), (), (1,)]


def test_an_unknown_label_in_a_set_is_named_with_its_line(tmp_path):
    paths = _images(tmp_path, 3)
    _csv(tmp_path, "train", [(paths[0], "a b"), (paths[1], "b")])
    _csv(tmp_path, "val", [(paths[2], "a zebra")])
    with pytest.raises(DatasetError, match=r"val\.csv:2: label 'zebra' is not a training class \(training classes: "
                                           r"a, b\)"):
        ClassificationDataset(tmp_path, "csv", "val", ["a", "b"], columns=SETS)


def test_a_single_label_table_of_label_sets_is_warned_of_but_class_names_with_spaces_are_not(tmp_path, caplog):
    paths = _images(tmp_path, 4)
    _csv(tmp_path, "train", [(paths[0], "1 4"), (paths[1], "1"), (paths[2], "4"), (paths[3], "4 1")])
    with caplog.at_level(logging.WARNING, logger="dataloader.datasets"):
        assert read_class_names(tmp_path, "csv") == ["1", "1 4", "4", "4 1"]
    assert re.search(r"train\.csv:2: label '1 4' is a set of labels that other rows have on their own \(2 rows are "
                     r"such sets\): each set is trained as a class of its own; add --multi_label", caplog.text)
    caplog.clear()
    _csv(tmp_path, "train", [(paths[0], "golden retriever"), (paths[1], "cat"), (paths[2], "red wine")])
    with caplog.at_level(logging.WARNING, logger="dataloader.datasets"):
        assert read_class_names(tmp_path, "csv") == ["cat", "golden retriever", "red wine"]
    assert "add --multi_label" not in caplog.text
    (tmp_path / "train.txt").write_text(f"{paths[0]} 0,1\n")
    with pytest.raises(DatasetError, match=r"label '0,1' is not an integer \(several labels are a multi-label "
                                           r"dataset: add --multi_label\)"):
        read_class_names(tmp_path, "txt")


def test_txt_and_zip_lists_of_label_sets(tmp_path):
    paths = _images(tmp_path, 3)
    (tmp_path / "train.txt").write_text(f"{paths[0]} 0,2\n{paths[1]} 1\n{paths[2]}\n")
    sets = Columns(sets=LabelSets(allow_empty=True))
    assert read_class_names(tmp_path, "txt", sets) == ["0", "1", "2"]
    assert ClassificationDataset(tmp_path, "txt", "train", columns=sets).targets == [(0, 2), (1,), ()]
    (tmp_path / "train.txt").write_text(f"{paths[0]} 0,x\n")
    with pytest.raises(DatasetError, match=r"train\.txt:1: label 'x' is not a class index"):
        read_class_names(tmp_path, "txt", sets)
    for line in (f"{paths[0]} 0, 1", f"{paths[0]} 0 1"):
        (tmp_path / "train.txt").write_text(line + "\n")
        with pytest.raises(DatasetError, match=r"train\.txt:1: malformed line .*: the labels of a line are one field "
                                               r"without spaces, 'path 1,4'"):
            read_class_names(tmp_path, "txt", sets)
    (tmp_path / "train.txt").write_text(f"{paths[0]} 0,3\n{paths[1]} 1\n")
    with pytest.raises(DatasetError, match=r"train\.txt:1: label 3 leaves label 2 without an image"):
        read_class_names(tmp_path, "txt", sets)
    with zipfile.ZipFile(tmp_path / "train.zip", "w") as zf:
        for p in paths:
            zf.write(tmp_path / p, p)
    (tmp_path / "train_map.txt").write_text(f"{paths[0]}\t1,0\n{paths[1]}\t1\n{paths[2]}\t2\n")
    data = ClassificationDataset(tmp_path, "zip", "train", columns=sets)
    assert data.targets == [(0, 1), (1,), (2,)] and data[0][1].tolist() == [1.0, 1.0, 0.0]


def test_topk_hits_on_label_sets_count_one_of_the_labels_among_the_top_k():
    logits = torch.tensor([[3.0, 2.0, 1.0, 0.0], [0.0, 1.0, 2.0, 3.0], [1.0, 3.0, 2.0, 0.0]])
    sets = torch.tensor([[0.0, 1.0, 0.0, 0.0], [1.0, 0.0, 0.0, 1.0], [0.0, 0.0, 0.0, 0.0]])
    # top-1: [0, 3, 1] hits [no, yes, no]; top-2: [0,1] [3,2] [1,2] -> [yes, yes, no]
    assert topk_hits(logits, sets, (1, 2)).tolist() == [1, 2]
    assert topk_hits(logits, torch.tensor([0, 2, 1]), (1, 2)).tolist() == [2, 3]  # single-label unchanged


def test_spec_thresholds_are_one_per_class_of_a_multi_label_model():
    spec = ModelSpec("simple_cnn", ("a", "b"), (8, 8), (0.5,) * 3, (0.5,) * 3, head="bce", multi_label=True,
                     thresholds=[0.3, 0.7])
    assert spec.decision_thresholds == [0.3, 0.7] and spec.sigmoid
    assert ModelSpec.from_dict(spec.to_dict()) == spec
    untuned = ModelSpec("simple_cnn", ("a", "b", "c"), (8, 8), (0.5,) * 3, (0.5,) * 3, multi_label=True)
    assert untuned.decision_thresholds == [0.5] * 3
    with pytest.raises(ValueError, match="1 decision thresholds for a multi-label model of 2 classes"):
        ModelSpec("simple_cnn", ("a", "b"), (8, 8), (0.5,) * 3, (0.5,) * 3, multi_label=True, thresholds=[0.3])
    with pytest.raises(ValueError, match="single-label model"):
        ModelSpec("simple_cnn", ("a", "b"), (8, 8), (0.5,) * 3, (0.5,) * 3, thresholds=[0.3, 0.3])


def test_a_multi_label_checkpoint_sets_the_task_and_its_label_flags_unless_given():
    import argparse
    saved = {"multi_label": True, "label_delim": ";", "allow_empty_labels": True}
    cfg = argparse.Namespace(multi_label=False, label_delim=None, allow_empty_labels=False, resume="b.pth")
    use_checkpoint_task(cfg, saved, given={"allow_empty_labels"})
    assert cfg.multi_label and cfg.label_delim == ";" and cfg.allow_empty_labels is False
    single = argparse.Namespace(multi_label=False, label_delim=None, allow_empty_labels=False, resume="b.pth")
    use_checkpoint_task(single, {"multi_label": False, "label_delim": ";"}, given=set())
    assert not single.multi_label and single.label_delim is None


def test_best_pth_is_the_epoch_of_the_best_val_map_not_of_the_best_p_at_1(tmp_path, caplog):
    def capture(**kwargs):
        return dict(kwargs, history=list(kwargs["history"]))
    end = EpochEnd(tmp_path, 2, CheckpointSaver(tmp_path / "checkpoints"), None, type("R", (), {"epoch": print})(),
                   capture, [], write=False, skip_bad_images=False)
    train = {"loss": 1.0, "top1": 50.0, "lr": 0.1, "img_per_s": 100.0, "time": 1.0, "skipped": 0}
    with caplog.at_level(logging.INFO, logger="engine.epoch_end"):
        assert end(0, train, {"top1": 90.0, "top5": 100.0, "loss": 0.5, "skipped": 0, "map": 60.0, "of1": 50.0,
                              "cf1": 40.0, "thresholds": [0.2, 0.4]}, None)
        assert end(1, train, {"top1": 80.0, "top5": 100.0, "loss": 0.6, "skipped": 0, "map": 70.0, "of1": 55.0,
                              "cf1": 45.0}, None)
    assert end.saver.best_epoch == 1 and end.saver.best_top1 == 70.0
    assert end.history[0]["val_map"] == 60.0 and end.history[1]["val_cf1"] == 45.0
    assert "val loss 0.5000 mAP 60.00 OF1 50.00 CF1 40.00 p@1 90.00" in caplog.text


def test_mixup_mixes_label_sets_as_it_mixes_the_images():
    from dataloader.enhancement import MixupCutmix
    sets = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    images = torch.stack([torch.zeros(3, 4, 4), torch.ones(3, 4, 4)])
    mixed, soft, lam = MixupCutmix(3, mixup_alpha=1.0).mix(images, sets, torch.Generator().manual_seed(0))
    assert 0 < lam < 1 and torch.allclose(mixed[0], torch.full((3, 4, 4), 1.0 - lam))
    assert torch.allclose(soft, torch.stack([sets[0] * lam + sets[1] * (1 - lam), sets[1] * lam + sets[0] * (1 - lam)]))


def test_a_multi_label_checkpoint_on_class_folders_is_refused_before_anything_runs(tmp_path):
    from config import ConfigError, check_files, parse_command_line
    torch.save({"config": {"multi_label": True, "label_delim": ";"}, "model": {}}, tmp_path / "ml.pth")
    (tmp_path / "folders" / "train" / "a").mkdir(parents=True)
    cfg, given = parse_command_line(["--evaluation", "--resume", str(tmp_path / "ml.pth"), "--data",
                                     str(tmp_path / "folders")])
    with pytest.raises(ConfigError, match="--multi_label with --dataset folder: a class folder gives each image"):
        check_files(cfg, given)
    assert cfg.multi_label and cfg.label_delim == ";"
    cfg, given = parse_command_line(["--evaluation", "--resume", str(tmp_path / "ml.pth"), "--multi_label",
                                     "--dataset", "csv", "--data", str(tmp_path)])
    check_files(cfg, given)
    assert cfg.label_delim == ";"  # taken from the checkpoint though --multi_label was given too


def test_a_split_without_any_label_has_no_map_and_says_so():
    from engine.loops import multilabel_summary
    with pytest.raises(ValueError, match="none of the 3 evaluated images has a label, so mAP is undefined"):
        multilabel_summary(torch.zeros(3, 2), torch.zeros(3, 2), 0.5)
    assert multilabel_summary(torch.tensor([[2.0, -2.0]]), torch.tensor([[1.0, 0.0]]), 0.5)["map"] == 100.0
