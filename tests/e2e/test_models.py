"""models/: every family (one model each, up to vit_b_16 at 224 px) round-trips through our checkpoint."""
from __future__ import annotations

import pytest
import torch

import models
from helpers import ROUND_TRIP, real_images, train_one_step_and_save


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(ROUND_TRIP))
def test_every_family_round_trips_through_our_checkpoint(name, tiny_data, tmp_path):
    """Train one step, save our checkpoint, load it as --pretrained/--resume/--evaluation do (the same
    extract_state_dict + load_state_dict_checked): the evaluation outputs are equal."""
    size = ROUND_TRIP[name]
    images = real_images(tiny_data["folder"] / "train", size, 1 if size >= 224 else 2)
    before = train_one_step_and_save(name, images, tmp_path / "ckpt.pth")
    torch.manual_seed(1)  # another initialisation: only the loaded weights can make the outputs equal
    loaded = models.create_model(name, num_classes=3, pretrained=tmp_path / "ckpt.pth").eval()
    with torch.no_grad():
        assert torch.equal(loaded(images), before)
