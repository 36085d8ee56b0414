"""applications/visualize.py end to end: main.py --visual_data / --visual_source on a real tiny checkpoint."""
from __future__ import annotations

import numpy as np

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
