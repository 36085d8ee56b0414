"""Multi-label exports (issue #29) on tiny hand-made inputs: the metadata carries the task and the thresholds,
the int8 guard measures mAP and label-set agreement, and the demo turns probabilities into label sets at the
export's thresholds (the round trip from a trained checkpoint: tests/e2e/test_export_multilabel.py)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn as nn
from PIL import Image

from export.core import ExportError, export_metadata, save_torchscript, to_torchscript
from export.guard import check_accuracy_drop, compare_accuracy
from helpers import demo_module
from models.spec import ModelSpec

SPEC = ModelSpec("simple_cnn", ["cat", "dog", "car"], (8, 8), (0.5,) * 3, (0.25,) * 3, head="bce", multi_label=True,
                 thresholds=(0.5, 0.9, 0.2))


def test_export_metadata_carries_the_task_and_the_thresholds():
    meta = export_metadata(SPEC)
    assert meta["multi_label"] is True and meta["thresholds"] == [0.5, 0.9, 0.2] and "multi-label" in meta["output"]
    untuned = export_metadata(ModelSpec("simple_cnn", ["a", "b"], (8, 8), (0.5,) * 3, (0.25,) * 3, head="asl",
                                        multi_label=True))
    assert untuned["thresholds"] == [0.5, 0.5]
    single = export_metadata(ModelSpec("simple_cnn", ["a", "b"], (8, 8), (0.5,) * 3, (0.25,) * 3))
    assert single["multi_label"] is False and single["thresholds"] == [] and "multi-label" not in single["output"]
    json.dumps(meta)


def test_the_guard_measures_map_and_label_set_agreement_at_the_thresholds():
    # targets {0}, {1}, {0, 1}. fp32 ranks class 0: img0+, img2+, img1- (AP 1); class 1: img1+, img0-, img2+
    # (AP (1 + 2/3) / 2): mAP 11/12. int8 ranks class 0: img1-, img2+, img0+ (AP (1/2 + 2/3) / 2 = 7/12);
    # class 1: img1+, img2+, img0- (AP 1): mAP 19/24.
    logits = {"fp32": torch.tensor([[2.0, 0.0], [-1.0, 3.0], [1.0, -2.0]]),
              "int8": torch.tensor([[-1.0, 0.0], [2.0, 3.0], [1.0, 1.0]])}
    targets = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    runners = {k: (lambda x, v=v: v[x]) for k, v in logits.items()}
    batches = [(torch.tensor([0, 1]), targets[:2]), (torch.tensor([2]), targets[2:])]
    # at (0.5, 0.9): logit >= 0 for class 0, >= 2.197 for class 1. fp32 {0}, {1}, {0}; int8 {}, {0, 1}, {0}
    report = compare_accuracy(runners, batches, thresholds=[0.5, 0.9])
    assert report.keys() == {"fp32_map", "int8_map", "agreement", "images"} and report["images"] == 3
    assert report["fp32_map"] == pytest.approx(100 * 11 / 12) and report["int8_map"] == pytest.approx(100 * 19 / 24)
    assert report["agreement"] == pytest.approx(100 / 3)
    # at 0.5 everywhere the last image's sets differ too: fp32 {0}, int8 {0, 1}
    assert compare_accuracy(runners, batches, thresholds=[0.5, 0.5])["agreement"] == 0.0
    with pytest.raises(ExportError, match=r"^the int8 file loses 12.50 points of mAP \(fp32 mAP 91.67%, int8 79.17%, "
                                          r"predicted label sets agree on 33.33% of 3 test images\), more than "
                                          r"--max_accuracy_drop 1;"):
        check_accuracy_drop("the int8 file", report, 1.0, "test")
    assert check_accuracy_drop("the int8 file", report, 12.5 + 1e-9, "test") == pytest.approx(12.5)
    with pytest.raises(ExportError, match="have no labels, so their mAP is undefined"):
        compare_accuracy(runners, [(torch.tensor([0, 1]), torch.zeros(2, 2))], thresholds=[0.5, 0.5])


class _ChannelMeans(nn.Module):
    """The mean of each input channel as that class's logit: a model whose outputs a test sets by colour."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3))


@pytest.fixture
def exported(tmp_path):
    path = tmp_path / "model_jit.pt"
    module, _ = to_torchscript(_ChannelMeans().eval(), torch.zeros(1, 3, 8, 8))
    save_torchscript(module, path, export_metadata(SPEC))
    return path


def test_demo_label_sets_apply_each_class_threshold(exported):
    clf = demo_module().Classifier(exported)
    assert clf.multi_label and clf.thresholds == [0.5, 0.9, 0.2]
    probs = torch.tensor([[0.6, 0.8, 0.1],  # cat only: dog is under its 0.9
                          [0.4, 0.95, 0.3],  # dog over car (highest first); cat under 0.5
                          [0.5, 0.2, 0.5],  # at a threshold counts (>=); equal scores in class order
                          [0.1, 0.1, 0.1]])  # no label
    got = [[name for name, _ in labels] for labels in clf.label_sets(probs)]
    assert got == [["cat"], ["dog", "car"], ["cat", "car"], []]
    assert clf.label_sets(probs)[1][0] == ("dog", pytest.approx(0.95))


def test_demo_prints_label_sets_of_a_multi_label_export(exported, tmp_path, capsys):
    demo = demo_module()
    # logit of class c: (x_c / 255 - 0.5) / 0.25; sigmoid of it for pixel 255, 0, 64: cat 0.88, dog 0.12, car 0.27
    Image.new("RGB", (8, 8), (255, 0, 64)).save(tmp_path / "a.png")
    Image.new("RGB", (8, 8), (0, 0, 0)).save(tmp_path / "b.png")
    assert demo.main([str(exported), str(tmp_path / "a.png"), "--json"]) == 0
    row = json.loads(capsys.readouterr().out)
    expected = torch.tensor([(255 / 255 - 0.5) / 0.25, (0 - 0.5) / 0.25, (64 / 255 - 0.5) / 0.25]).sigmoid().tolist()
    assert [label["name"] for label in row["labels"]] == ["cat", "car"]  # dog's 0.12 is under 0.9, car's 0.27 over 0.2
    np.testing.assert_allclose(list(row["scores"].values()), expected, rtol=1e-6)
    assert list(row["scores"]) == ["cat", "dog", "car"] and row["labels"][0]["score"] == row["scores"]["cat"]
    assert demo.main([str(exported), str(tmp_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines == [f"{tmp_path / 'a.png'}: cat {expected[0]:.4f}, car {expected[2]:.4f}",
                     f"{tmp_path / 'b.png'}: (no label)"]


def test_demo_refuses_thresholds_that_do_not_fit_the_classes(tmp_path):
    demo = demo_module()
    module, _ = to_torchscript(_ChannelMeans().eval(), torch.zeros(1, 3, 8, 8))
    for bad in ([0.5, 0.5], [0.5, 1.5, 0.2], "0.5"):
        path = save_torchscript(module, tmp_path / "bad.pt", {**export_metadata(SPEC), "thresholds": bad})
        with pytest.raises(ValueError, match=r"its thresholds metadata is not one probability \(0..1\) per class of "
                                             r"its 3 classes"):
            demo.Classifier(path)
    single = save_torchscript(module, tmp_path / "single.pt", export_metadata(
        ModelSpec("simple_cnn", ["a", "b", "c"], (8, 8), (0.5,) * 3, (0.25,) * 3)))
    clf = demo.Classifier(single)
    assert not clf.multi_label
    with pytest.raises(ValueError, match="is a single-label export"):
        clf.label_sets(torch.zeros(1, 3))
