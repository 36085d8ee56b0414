"""models/tta.py (issue #30 items 3 and 5): TTA views, crops by hand, probability averaging, ensembles."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from engine import evaluate
from models.tta import ProbabilityAverage, five_crops, probabilities_to_logits, tta_views


class TinyNet(nn.Module):
    """A model that is not mirror-symmetric (a linear layer over the flattened pixels)."""

    def __init__(self, classes: int = 3, side: int = 4, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.fc = nn.Linear(side * side, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.adaptive_avg_pool2d(x.mean(1, keepdim=True), 4)
        return self.fc(x.flatten(1)) * 3


def test_hflip_equals_the_mean_of_the_model_on_x_and_on_the_flipped_x():
    model, x = TinyNet().eval(), torch.randn(5, 1, 4, 4)
    expected = (model(x).softmax(1) + model(x.flip(-1)).softmax(1)) / 2
    got = ProbabilityAverage([model], tta="hflip")(x)
    assert torch.allclose(got.softmax(1), expected, atol=1e-6)
    assert not torch.allclose(model(x).softmax(1), expected, atol=1e-3)  # the flip changes something
    # sigmoid heads: the mean of the sigmoid probabilities, given back as log-odds
    expected = (model(x).sigmoid() + model(x.flip(-1)).sigmoid()) / 2
    assert torch.allclose(ProbabilityAverage([model], head="bce", tta="hflip")(x).sigmoid(), expected, atol=1e-6)


def test_an_ensemble_of_one_checkpoint_equals_it_and_of_two_their_mean():
    a, b, x = TinyNet(seed=1).eval(), TinyNet(seed=2).eval(), torch.randn(6, 1, 4, 4)
    assert torch.allclose(ProbabilityAverage([a])(x).softmax(1), a(x).softmax(1), atol=1e-6)
    assert torch.allclose(ProbabilityAverage([a])(x).argmax(1), a(x).argmax(1))
    pair = ProbabilityAverage([a, b])
    assert torch.allclose(pair(x).softmax(1), (a(x).softmax(1) + b(x).softmax(1)) / 2, atol=1e-6)
    members = pair.member_probabilities(x)
    assert torch.allclose(members[1], b(x).softmax(1), atol=1e-6)


def test_five_and_ten_crops_by_hand_on_a_tiny_image():
    image = torch.arange(16.0).reshape(1, 1, 4, 4)  # rows 0-3 x cols 0-3, value 4 * row + col
    crops = [c[0, 0].tolist() for c in five_crops(image, (2, 2))]
    assert crops == [[[0, 1], [4, 5]], [[2, 3], [6, 7]], [[8, 9], [12, 13]], [[10, 11], [14, 15]],
                     [[5, 6], [9, 10]]]
    odd = torch.arange(9.0).reshape(1, 1, 3, 3)
    from torchvision.transforms.v2.functional import five_crop  # the reference, on an odd margin
    assert all(torch.equal(ours, theirs) for ours, theirs in zip(five_crops(odd, (2, 2)), five_crop(odd, [2, 2])))
    big = torch.arange(64.0).reshape(1, 1, 8, 8)
    five, ten = tta_views(big, "five_crop"), tta_views(big, "ten_crop")
    assert len(five) == 5 and len(ten) == 10 and all(v.shape == big.shape for v in ten)
    for plain, mirrored in zip(ten[:5], ten[5:]):
        assert torch.equal(mirrored, plain.flip(-1))
    with pytest.raises(ValueError, match="does not fit"):
        five_crops(image, (5, 2))


def test_scales_resize_the_batch_and_one_scale_of_one_is_the_model():
    model, x = TinyNet().eval(), torch.randn(2, 1, 8, 8)
    assert [v.shape[-1] for v in tta_views(x, "scales", (0.5, 1.0, 1.5))] == [4, 8, 12]
    assert torch.allclose(ProbabilityAverage([model], tta="scales", scales=(1.0,))(x).softmax(1),
                          model(x).softmax(1), atol=1e-6)
    with pytest.raises(ValueError, match="unknown TTA mode"):
        tta_views(x, "vflip")


def test_logits_of_probabilities_round_trip():
    p = torch.tensor([[0.2, 0.3, 0.5]])
    assert torch.allclose(probabilities_to_logits(p, False).softmax(1), p)
    assert torch.allclose(probabilities_to_logits(p, True).sigmoid(), p)


def test_the_evaluation_loop_scores_the_averaged_probabilities():
    """Through engine.evaluate: the NLL is that of the averaged probabilities, top-1 their argmax."""
    model, x = TinyNet().eval(), torch.randn(8, 1, 4, 4)
    y = torch.arange(8) % 3
    loader = torch.utils.data.DataLoader(list(zip(x, y, torch.arange(8))), batch_size=3)
    tta = ProbabilityAverage([model], tta="hflip")
    result = evaluate(tta, loader, nn.CrossEntropyLoss(), preprocess=lambda t: t, return_outputs=True)
    probs = (model(x).softmax(1) + model(x.flip(-1)).softmax(1)) / 2
    nll = -probs[torch.arange(8), y].log().mean().item()
    assert result["loss"] == pytest.approx(nll, rel=1e-5)
    assert result["top1"] == pytest.approx(100.0 * (probs.argmax(1) == y).float().mean().item())


def test_members_at_their_own_temperature_and_the_output_at_the_first():
    """Each member's logits are divided by its own temperature before averaging; the output, divided by the
    first's temperature (as the modes and the demo do), gives the average back."""
    torch.manual_seed(0)
    a, b = nn.Linear(6, 4), nn.Linear(6, 4)
    x = torch.randn(5, 6)
    pair = ProbabilityAverage([a, b], temperatures=[2.0, 0.5], output_temperature=2.0)
    expected = ((a(x) / 2.0).softmax(1) + (b(x) / 0.5).softmax(1)) / 2
    assert torch.allclose((pair(x) / 2.0).softmax(1), expected, atol=1e-6)
    with pytest.raises(ValueError, match="2 temperatures for 1 models"):
        ProbabilityAverage([a], temperatures=[1.0, 2.0])
