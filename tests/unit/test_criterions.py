"""criterions/: softmax cross-entropy against hand computations and torch's reference."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from criterions import create_criterion

LOGITS = torch.tensor([[1.0, 2.0, 3.0], [0.5, 0.0, -0.5]])
TARGET = torch.tensor([2, 0])


def log_softmax_row(row):
    z = sum(math.exp(v) for v in row)
    return [v - math.log(z) for v in row]


def test_hard_targets_match_hand_computation():
    expected = -(log_softmax_row([1, 2, 3])[2] + log_softmax_row([0.5, 0, -0.5])[0]) / 2
    assert create_criterion("softmax")(LOGITS, TARGET).item() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("eps", [0.0, 0.1, 0.3])
def test_label_smoothing_matches_torch(eps):
    ours = create_criterion("softmax", label_smoothing=eps)(LOGITS, TARGET)
    assert ours.item() == pytest.approx(F.cross_entropy(LOGITS, TARGET, label_smoothing=eps).item(), rel=1e-6)


def test_soft_targets_hand_computed():
    soft = torch.tensor([[0.2, 0.3, 0.5], [1.0, 0.0, 0.0]])
    a, b = log_softmax_row([1, 2, 3]), log_softmax_row([0.5, 0, -0.5])
    expected = (-(0.2 * a[0] + 0.3 * a[1] + 0.5 * a[2]) - b[0]) / 2
    assert create_criterion("softmax")(LOGITS, soft).item() == pytest.approx(expected, rel=1e-6)


def test_sample_weights_and_zero_weight_gives_no_gradient():
    logits = LOGITS.clone().requires_grad_(True)
    loss = create_criterion("softmax")(logits, TARGET, weight=torch.tensor([0.0, 2.0]))
    assert loss.item() == pytest.approx(-2 * log_softmax_row([0.5, 0, -0.5])[0] / 2, rel=1e-6)
    loss.backward()
    assert torch.all(logits.grad[0] == 0) and torch.any(logits.grad[1] != 0)


def test_unknown_criterion():
    with pytest.raises(ValueError, match="unknown criterion 'hinge'"):
        create_criterion("hinge")
