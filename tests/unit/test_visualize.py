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
