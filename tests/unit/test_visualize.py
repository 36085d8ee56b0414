"""applications/visualize.py end to end: main.py --visual_data / --visual_source on a real tiny checkpoint."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from explain.pictures import class_interleaved


def test_class_interleaved_order():
    assert class_interleaved([0, 0, 0, 1, 2, 2]) == [0, 3, 4, 1, 5, 2]
    assert class_interleaved([0, 0, 0, 1, 2, 2], limit=4) == [0, 3, 4, 1]


def test_a_narrow_gallery_widens_for_its_whole_title():
    """--visual_limit 1 leaves one tile per row: the title must not be cut at the sheet's edge."""
    from utils.images import _font, contact_sheet
    title = "grad-cam++ on features.denseblock4 (densenet121), test, explaining 7"
    tile = np.full((96, 96, 3), 128, np.uint8)
    sheet = contact_sheet([("7", [(tile, "7", True)])], title=title)
    assert sheet.shape[1] >= _font(13).getlength(title) + 8
    right = sheet[:20, -4:]  # the title bar's right edge stays white: the text ends inside the sheet
    assert (right == 255).all()


def _explanation(side: int, maps: np.ndarray | None = None):
    import torch

    from explain.cam import Explanation
    maps = np.random.default_rng(0).random((2, 16, 16), dtype=np.float32) if maps is None else maps
    return Explanation(heatmaps=maps, logits=torch.zeros(len(maps), 3), classes=[0] * len(maps),
                       feature_size=(side, side))


def test_coarse_maps_are_named_at_2x2_and_1x1_not_at_4x4(caplog):
    """resnet18's layer4 at 48 px gives 2 x 2 maps: quadrant blobs were drawn with no warning (only 1 x 1 had one)."""
    from applications.visualize import _warn_if_coarse
    _warn_if_coarse(_explanation(4), "layer3", (64, 64), "grad-cam")
    assert not caplog.records
    _warn_if_coarse(_explanation(2), "layer4", (48, 48), "cam")
    assert ("layer 'layer4' gives 2 x 2 maps at input size 48x48: the heatmaps are 2 x 2 blocks (quadrants)"
            in caplog.text)
    assert "CAM is bound to the pooled feature map" in caplog.text
    _warn_if_coarse(_explanation(1), "layer4", (16, 16), "grad-cam")
    assert "gives 1 x 1 maps at input size 16x16: the heatmaps carry no spatial information" in caplog.text


def test_blank_heatmaps_are_counted_and_said(caplog):
    from applications.visualize import _warn_if_blank, blank_maps
    maps = np.random.default_rng(0).random((3, 8, 8), dtype=np.float32)
    assert blank_maps(maps) == 0
    maps[1] = 0
    assert blank_maps(maps) == 1 and blank_maps(maps[:0]) == 0
    _warn_if_blank(0, 3, "layer2", "grad-cam")
    assert not caplog.records
    _warn_if_blank(blank_maps(maps), 3, "layer2", "grad-cam")
    assert "1 of 3 grad-cam heatmaps on layer 'layer2' are all zero" in caplog.text


# ------------------------------------------------------------------------------------- multi-label models
class GapNet(torch.nn.Module):
    """conv -> ReLU -> global average pooling -> linear: what CAM needs; 4 sigmoid outputs."""

    def __init__(self, classes: int = 4):
        super().__init__()
        self.features = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU())
        self.pool = torch.nn.AdaptiveAvgPool2d(1)
        self.fc = torch.nn.Linear(8, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.features(x)).flatten(1))


@pytest.mark.parametrize("thresholds", [[0.0] * 4, [1.0] * 4, [0.0, 1.0, 0.0, 1.0]])
def test_each_predicted_label_gets_the_cam_of_its_own_class(thresholds):
    from explain.cam import CamExplainer, postprocess
    from explain.pictures import explain_predicted
    torch.manual_seed(0)
    net, images = GapNet().eval(), torch.rand(5, 3, 16, 16)
    with CamExplainer(net, "cam") as explainer:
        result, maps = explain_predicted(explainer, images, thresholds)
    with torch.no_grad():
        features, scores = net.features(images), net(images).sigmoid()
    for k, pairs in enumerate(maps):
        expected = [c for c in range(4) if scores[k, c] >= thresholds[c]] or [int(scores[k].argmax())]
        assert sorted(c for c, _ in pairs) == expected  # every predicted label, the top class when none passes
        assert [c for c, _ in pairs] == sorted(expected, key=lambda c: -float(scores[k, c]))  # best first
        for c, heatmap in pairs:  # CAM of class c: sum_k w[c, k] * A_k, by hand
            raw = torch.einsum("k,khw->hw", net.fc.weight[c].detach(), features[k]).numpy()
            assert np.allclose(heatmap, postprocess(raw[None], (16, 16))[0], atol=1e-5), (k, c)
    assert torch.allclose(result.logits, net(images).detach(), atol=1e-5)


def test_predicted_labels_fall_back_to_the_top_class():
    from explain.pictures import predicted_labels
    scores = torch.tensor([[0.2, 0.9, 0.6], [0.1, 0.3, 0.2], [0.7, 0.1, 0.8]])
    assert predicted_labels(scores, [0.5, 0.5, 0.5]) == [[1, 2], [1], [2, 0]]
    assert predicted_labels(scores, [0.5, 0.95, 0.9]) == [[1], [1], [0]]  # per class: 0 passes, the top (2) does not


@pytest.mark.parametrize("method, name, thresholds", [("cam", "all", [0.0] * 10), ("grad-cam", "none", [1.0] * 10)])
def test_visual_data_on_a_multi_label_model_writes_one_picture_per_predicted_label(mosaics, tmp_path, method, name,
                                                                                    thresholds):
    from applications.setup.common import predict_split, restore_for_inference
    from applications.visualize import run
    from config import parse_config
    from helpers import multi_label_checkpoint
    stems = sorted(p.stem for p in (mosaics / "images" / "test").iterdir())
    classes = [str(c) for c in range(10)]
    checkpoint = multi_label_checkpoint(tmp_path / name, mosaics, thresholds=thresholds)
    args = ["--visual_data", "test", "--visual_method", method, "--resume", str(checkpoint), "--multi_label",
            "--dataset", "csv", "--data", str(mosaics), "-j", "0", "-b", "3", "--no_progress"]
    result = run(parse_config(args))
    out = tmp_path / name / "visual" / method / "test"
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png"))
    assert "gallery.png" in files and result["images"] == len(stems)
    files.remove("gallery.png")
    if name == "all":  # every class passes: a picture per class of every image, in the class's folder
        assert files == sorted(f"{c}/{s}.png" for c in classes for s in stems)
        assert result["overlays"] == 10 * len(stems)
    else:  # none passes: the top class alone, as the evaluation ranks it
        cfg = parse_config(args)
        dataset, evaluated = predict_split(cfg, restore_for_inference(cfg), "test")
        top = {Path(dataset.samples[i][0]).stem: classes[int(row.argmax())]
               for i, row in zip(evaluated["indices"].tolist(), evaluated["logits"])}
        assert files == sorted(f"{top[s]}/{s}.png" for s in stems) and result["overlays"] == len(stems)


def test_a_tiny_score_is_not_shown_as_zero():
    from explain.pictures import score_text
    assert score_text(0.934) == "0.93" and score_text(0.0031) == "3.1e-03" and score_text(0.0) == "0.00"


def test_tensorboard_overlays_of_a_multi_label_model(mosaics, tmp_path):
    """The end of --train on label-set data (multi-hot items): one titled overlay per image (its top label's map)."""
    from applications.setup.common import build_dataset, preprocessor, restore_for_inference
    from config import parse_config
    from explain.pictures import cam_overlays_for_tensorboard
    from helpers import multi_label_checkpoint
    checkpoint = multi_label_checkpoint(tmp_path / "run", mosaics)
    cfg = parse_config(["--visual_data", "val", "--resume", str(checkpoint), "--multi_label", "--dataset", "csv",
                        "--data", str(mosaics), "-j", "0"])
    restored = restore_for_inference(cfg)
    dataset = build_dataset(cfg, "val", restored.class_names, train=False, spec=restored.spec)
    preprocess = preprocessor(restored.spec, restored.device)
    batch = cam_overlays_for_tensorboard(restored.model, dataset, preprocess, restored.class_names, arch="resnet18",
                                         n=2, head="bce", min_side=64)
    assert batch.dtype == torch.uint8 and batch.shape[:2] == (2, 3) and batch.shape[2] > 64  # titled pictures
    assert batch.float().std() > 10
