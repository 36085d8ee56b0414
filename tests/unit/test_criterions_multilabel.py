"""criterions/ with multi-hot targets (``multi_label``) and the asl head, against torch, torchvision and timm."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torchvision.ops import sigmoid_focal_loss

from criterions import create_criterion
from criterions.loss import ModulatedLoss
from criterions.modifiers import Modifier

timm_loss = pytest.importorskip("timm.loss")

# row 0: two labels; row 1: none at all; row 2: three; row 3: one
MULTI_HOT = torch.tensor([[1.0, 0, 1, 0], [0, 0, 0, 0], [1, 1, 0, 1], [0, 0, 0, 1]])
W = torch.tensor([0.5, 2.0, 3.0, 1.5])


def logits_for(target=MULTI_HOT, scale=2.0, seed=0):
    return torch.randn(target.shape, generator=torch.Generator().manual_seed(seed)) * scale


def value_and_grad(loss_fn, logits, target):
    logits = logits.clone().requires_grad_(True)
    loss = loss_fn(logits, target)
    loss.backward()
    return loss.detach(), logits.grad


def assert_same(ours, reference, logits, target=MULTI_HOT, factor=1.0):
    """Loss value and gradient of ``ours`` equal ``reference / factor``."""
    loss, grad = value_and_grad(ours, logits, target)
    ref_loss, ref_grad = value_and_grad(reference, logits, target)
    torch.testing.assert_close(loss * factor, ref_loss, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(grad * factor, ref_grad, rtol=1e-5, atol=1e-7)


# --- bce head, class weights, focal ----------------------------------------------------------------

def test_bce_multi_hot_is_torch_bce_and_never_argmaxed():
    logits = logits_for()
    assert_same(create_criterion("bce", multi_label=True), F.binary_cross_entropy_with_logits, logits)


def test_class_weights_are_pos_weight():
    logits = logits_for()
    reference = torch.nn.BCEWithLogitsLoss(pos_weight=W)
    assert_same(create_criterion("bce", multi_label=True, class_weights=W), reference, logits)
    # single-label keeps weighting the whole term of class c: not the same loss
    single = create_criterion("bce", class_weights=W)(logits, MULTI_HOT)
    assert not math.isclose(single.item(), reference(logits, MULTI_HOT).item(), rel_tol=1e-3)


@pytest.mark.parametrize("gamma", [0.5, 2.0])
def test_focal_per_term_is_sigmoid_focal_loss(gamma):
    logits = logits_for()
    crit = create_criterion("bce", multi_label=True, focal=True, focal_gamma=gamma)
    reference = sigmoid_focal_loss(logits, MULTI_HOT, alpha=-1, gamma=gamma, reduction="mean")
    assert crit(logits, MULTI_HOT).item() == pytest.approx(reference.item(), rel=1e-5)
    # the gradient is the package's detached modulating factor (1 - p_t) ** gamma on the BCE gradient

    def detached_focal(x, t):
        p = x.sigmoid()
        p_t = p * t + (1 - p) * (1 - t)
        return (F.binary_cross_entropy_with_logits(x, t, reduction="none") * (1 - p_t).detach() ** gamma).mean()
    assert_same(crit, detached_focal, logits)


# --- GHM, OHM, threshold per term ------------------------------------------------------------------

def test_ghm_counts_each_sample_class_term_by_hand():
    # g = |sigmoid(x) - t| with 2 bins (edges 0, .5, 1+1e-6): row 0 (labels 0 and 1): .119 .731 .119,
    # row 1 (label 2): .007 .047 .731 -> bin 0 holds 4 of the 6 terms, bin 1 holds 2; the two labels of
    # row 0 land in different bins, each term on its own. Weights: 6 / 4 / 2 = .75 and 6 / 2 / 2 = 1.5
    logits = torch.tensor([[2.0, -1.0, -2.0], [-5.0, -3.0, -1.0]])
    target = torch.tensor([[1.0, 1, 0], [0, 0, 1]])
    crit = create_criterion("bce", multi_label=True, ghm=True, ghm_bins=2, ghm_momentum=0.0)
    weights = [[0.75, 1.5, 0.75], [0.75, 0.75, 1.5]]
    terms = [[-math.log(1 / (1 + math.exp(-x))) if t else -math.log(1 - 1 / (1 + math.exp(-x)))
              for x, t in zip(row, trow)] for row, trow in zip(logits.tolist(), target.tolist())]
    hand = sum(w * v for wr, tr in zip(weights, terms) for w, v in zip(wr, tr)) / 6
    assert crit(logits, target).item() == pytest.approx(hand, rel=1e-6)


def test_ohm_keeps_the_hardest_terms_not_samples():
    # g: row 0 (labels 0, 2): .018 .047 .378; row 1 (no label): .269 .881 .007 -> hardest 3 of 6 at 0.5
    logits = torch.tensor([[4.0, -3.0, 0.5], [-1.0, 2.0, -5.0]])
    target = torch.tensor([[1.0, 0, 1], [0, 0, 0]])
    _, grad = value_and_grad(create_criterion("bce", multi_label=True, ohm=True, ohm_ratio=0.5), logits, target)
    kept = torch.tensor([[False, False, True], [True, True, False]])
    assert torch.all(grad[~kept] == 0) and torch.all(grad[kept] != 0)


def test_threshold_per_label():
    # row 0 has labels 0 and 1: p .953 > .9 is learnt (dropped), p .5 is kept; absent p .047 < .1 dropped
    logits = torch.tensor([[3.0, 0.0, -3.0], [-1.0, 1.0, 4.0]])
    target = torch.tensor([[1.0, 1, 0], [0, 0, 0]])
    crit = create_criterion("bce", multi_label=True, threshold=True, threshold_low=0.1, threshold_high=0.9)
    _, grad = value_and_grad(crit, logits, target)
    dropped = torch.tensor([[True, False, True], [False, False, False]])
    assert torch.all(grad[dropped] == 0) and torch.all(grad[~dropped] != 0)


class _SeenLabels(Modifier):
    """Records what the loss hands its modifiers as ``labels``."""

    def forward(self, terms):
        self.seen = terms.labels
        return torch.ones_like(terms.p)


def test_modifiers_get_no_labels_with_multi_label():
    spy = _SeenLabels()
    ModulatedLoss(create_criterion("bce").head, {"spy": spy}, multi_label=True)(logits_for(), MULTI_HOT)
    assert spy.seen is None
    ModulatedLoss(create_criterion("bce").head, {"spy": spy})(logits_for(), MULTI_HOT)
    assert spy.seen.tolist() == [0, 0, 0, 3]  # single-label soft targets: argmax, as before


@pytest.mark.parametrize("head", ["bce", "asl"])
def test_all_per_label_modifiers_with_mixed_sets_and_zero_weight(head):
    mixed = 0.7 * MULTI_HOT + 0.3 * MULTI_HOT.roll(1, dims=0)  # mixup of label sets
    crit = create_criterion(head, multi_label=True, class_weights=W, ghm=True, ohm=True, threshold=True,
                            focal=head == "bce")
    logits = logits_for().requires_grad_(True)
    loss = crit(logits, mixed, weight=torch.tensor([0.0, 1.0, 2.0, 1.0]))
    loss.backward()
    assert torch.isfinite(loss) and torch.all(logits.grad[0] == 0) and torch.any(logits.grad[1:] != 0)


# --- the asl head -----------------------------------------------------------------------------------

@pytest.mark.parametrize("gamma_neg, gamma_pos, clip", [(4, 1, 0.05), (2, 0, 0.2), (0, 0, 0.0), (3, 2, 0.0)])
def test_asl_matches_timm(gamma_neg, gamma_pos, clip):
    # large logits too: the eps clamp of log(p) and the clipped negatives (p < clip) both occur
    logits = torch.cat([logits_for(scale=2.0), logits_for(scale=25.0, seed=1)])
    target = torch.cat([MULTI_HOT, MULTI_HOT.flip(0)])
    ours = create_criterion("asl", multi_label=True, asl_gamma_neg=gamma_neg, asl_gamma_pos=gamma_pos,
                            asl_clip=clip)
    kwargs = dict(gamma_neg=gamma_neg, gamma_pos=gamma_pos, clip=clip)
    assert_same(ours, timm_loss.AsymmetricLossMultiLabel(**kwargs, reduction="mean"), logits, target)
    n, c = target.shape
    # timm's default reduction sums over classes: ours times C; the original's sum: ours times N * C
    assert_same(ours, timm_loss.AsymmetricLossMultiLabel(**kwargs), logits, target, factor=c)
    assert_same(ours, timm_loss.AsymmetricLossMultiLabel(**kwargs, reduction="sum"), logits, target, factor=n * c)


def test_asl_focusing_is_differentiated_as_timm_default():
    logits = logits_for()
    ours = create_criterion("asl", multi_label=True)
    assert_same(ours, timm_loss.AsymmetricLossMultiLabel(reduction="mean"), logits)
    detached = timm_loss.AsymmetricLossMultiLabel(reduction="mean", disable_torch_grad_focal_loss=True)
    _, grad = value_and_grad(ours, logits, MULTI_HOT)
    _, other = value_and_grad(detached, logits, MULTI_HOT)
    assert not torch.allclose(grad, other, rtol=1e-3)


def test_asl_class_weights_are_timm_pos_weight():
    logits = logits_for()
    ours = create_criterion("asl", multi_label=True, class_weights=W)
    assert_same(ours, timm_loss.AsymmetricLossMultiLabel(pos_weight=W, reduction="mean"), logits)


def test_asl_without_focusing_or_clip_is_bce():
    logits = logits_for()
    asl = create_criterion("asl", multi_label=True, asl_gamma_neg=0, asl_gamma_pos=0, asl_clip=0)
    assert_same(asl, F.binary_cross_entropy_with_logits, logits)


def test_asl_single_label_takes_class_indices_as_one_hot():
    logits, target = logits_for(), torch.tensor([0, 3, 1, 1])
    assert_same(create_criterion("asl"), lambda x, y: timm_loss.AsymmetricLossMultiLabel(reduction="mean")(
        x, F.one_hot(y, 4).float()), logits, target)


# --- refusals ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("name, options, message", [
    ("bce", dict(cost_matrix=torch.ones(4, 4)), r"a cost matrix M\[true, other\] needs one true class per image"),
    ("bce", dict(label_smoothing=0.1), "label smoothing as defined for one class per image"),
    ("asl", dict(label_smoothing=0.1), "label smoothing as defined for one class per image"),
    ("softmax", {}, "criterion 'softmax' treats the classes as mutually exclusive; --multi_label needs"),
])
def test_multi_label_refusals(name, options, message):
    with pytest.raises(ValueError, match=message):
        create_criterion(name, multi_label=True, **options)


@pytest.mark.parametrize("options, message", [
    (dict(focal=True), "the asl criterion focuses already"),
    (dict(asl_gamma_neg=-1), "asl_gamma_neg and asl_gamma_pos must be >= 0"),
    (dict(asl_clip=1.0), r"asl_clip must be in \[0, 1\)"),
    (dict(asl_gamma_pos=float("nan")), "asl_gamma_pos must be a finite number"),
])
def test_asl_bad_arguments(options, message):
    with pytest.raises(ValueError, match=message):
        create_criterion("asl", **options)


def test_multi_label_needs_multi_hot_targets():
    with pytest.raises(ValueError, match=r"multi-label targets must be multi-hot \(4, 4\), got shape \(4,\)"):
        create_criterion("bce", multi_label=True)(logits_for(), torch.tensor([0, 1, 2, 3]))


def test_unknown_criterion_lists_asl():
    with pytest.raises(ValueError, match="choose from softmax, bce, asl"):
        create_criterion("hinge")
