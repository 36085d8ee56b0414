"""criterions/: the bce head and the modifiers, against hand computations with plain ``math``."""
from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from criterions import create_criterion
from criterions.base import Terms
from utils.loss_weights import load_class_weights, load_cost_matrix

LOGITS = torch.tensor([[1.0, 2.0, 3.0], [0.5, 0.0, -0.5]])
TARGET = torch.tensor([2, 0])
ONEHOT = [[0, 0, 1], [1, 0, 0]]
W = [0.5, 1.0, 2.0]
M = [[0.0, 1.0, 2.0], [3.0, 0.0, 4.0], [5.0, 6.0, 0.0]]


def sigmoid(x):
    return 1 / (1 + math.exp(-x))


def softmax_row(row):
    z = sum(math.exp(v) for v in row)
    return [math.exp(v) / z for v in row]


def bce(x, t):
    p = sigmoid(x)
    return -(t * math.log(p) + (1 - t) * math.log(1 - p))


def bce_terms(logits=LOGITS, onehot=ONEHOT):
    return [[bce(x, t) for x, t in zip(row, trow)] for row, trow in zip(logits.tolist(), onehot)]


def ce_true(i):
    """-log p of sample i's true class."""
    return -math.log(softmax_row(LOGITS[i].tolist())[TARGET[i].item()])


def grad_of(crit, logits, target, weight=None):
    logits = logits.clone().requires_grad_(True)
    loss = crit(logits, target, weight=weight)
    loss.backward()
    return loss, logits.grad


# --- bce head ------------------------------------------------------------------------------------

def test_bce_plain_matches_torch_and_hand():
    loss = create_criterion("bce")(LOGITS, TARGET).item()
    torch_ref = F.binary_cross_entropy_with_logits(LOGITS, torch.tensor(ONEHOT, dtype=torch.float32)).item()
    hand = sum(map(sum, bce_terms())) / 6
    assert loss == pytest.approx(torch_ref, rel=1e-6)
    assert loss == pytest.approx(hand, rel=1e-6)


def test_bce_label_smoothing_hand_computed():
    eps = 0.3
    smoothed = [[(1 - eps) * t + eps / 3 for t in row] for row in ONEHOT]
    hand = sum(map(sum, bce_terms(onehot=smoothed))) / 6
    assert create_criterion("bce", label_smoothing=eps)(LOGITS, TARGET).item() == pytest.approx(hand, rel=1e-6)


def test_softmax_without_modifiers_is_bitwise_the_old_formula():
    for eps in (0.0, 0.1):
        old = -(F.one_hot(TARGET, 3).float().mul(1 - eps).add(eps / 3) * F.log_softmax(LOGITS, 1)).sum(1).mean()
        assert torch.equal(create_criterion("softmax", label_smoothing=eps)(LOGITS, TARGET), old)


# --- class weights and cost matrix -----------------------------------------------------------------

def test_class_weights_softmax_hand_computed():
    loss = create_criterion("softmax", class_weights=torch.tensor(W))(LOGITS, TARGET).item()
    assert loss == pytest.approx((W[2] * ce_true(0) + W[0] * ce_true(1)) / 2, rel=1e-6)


def test_class_weights_bce_hand_computed():
    loss = create_criterion("bce", class_weights=torch.tensor(W))(LOGITS, TARGET).item()
    hand = sum(W[c] * term for row in bce_terms() for c, term in enumerate(row)) / 6
    assert loss == pytest.approx(hand, rel=1e-6)


def test_cost_matrix_softmax_hand_computed():
    loss = create_criterion("softmax", cost_matrix=torch.tensor(M))(LOGITS, TARGET).item()
    expected = 0.0
    for i in range(2):
        p, y = softmax_row(LOGITS[i].tolist()), TARGET[i].item()
        expected += sum(M[y][c] * p[c] for c in range(3)) * ce_true(i)
    assert loss == pytest.approx(expected / 2, rel=1e-6)


def test_cost_matrix_softmax_weight_is_detached():
    # the expected cost scales the gradient of each sample's cross-entropy; it is not differentiated
    _, grad = grad_of(create_criterion("softmax", cost_matrix=torch.tensor(M)), LOGITS, TARGET)
    _, plain = grad_of(create_criterion("softmax"), LOGITS, TARGET)
    cost = (torch.tensor(M)[TARGET] * LOGITS.softmax(1)).sum(1, keepdim=True)
    torch.testing.assert_close(grad, plain * cost)


def test_cost_matrix_bce_hand_computed():
    loss = create_criterion("bce", cost_matrix=torch.tensor(M))(LOGITS, TARGET).item()
    terms = bce_terms()
    hand = sum(M[TARGET[i].item()][c] * terms[i][c] for i in range(2) for c in range(3)) / 6
    assert loss == pytest.approx(hand, rel=1e-6)


def test_cost_matrix_uses_argmax_of_soft_targets():
    soft = torch.tensor([[0.0, 0.3, 0.7], [0.7, 0.3, 0.0]])  # argmax = TARGET
    crit = create_criterion("bce", cost_matrix=torch.tensor(M))
    plain = [[bce(x, t) for x, t in zip(row, trow)] for row, trow in zip(LOGITS.tolist(), soft.tolist())]
    hand = sum(M[TARGET[i].item()][c] * plain[i][c] for i in range(2) for c in range(3)) / 6
    assert crit(LOGITS, soft).item() == pytest.approx(hand, rel=1e-6)


# --- focal -----------------------------------------------------------------------------------------

def test_focal_softmax_hand_computed():
    loss = create_criterion("softmax", focal=True, focal_gamma=2.0)(LOGITS, TARGET).item()
    expected = 0.0
    for i in range(2):
        p_t = softmax_row(LOGITS[i].tolist())[TARGET[i].item()]
        expected += (1 - p_t) ** 2 * -math.log(p_t)
    assert loss == pytest.approx(expected / 2, rel=1e-6)


def test_focal_bce_hand_computed():
    loss = create_criterion("bce", focal=True, focal_gamma=1.5)(LOGITS, TARGET).item()
    hand = sum(abs(sigmoid(x) - t) ** 1.5 * bce(x, t)
               for row, trow in zip(LOGITS.tolist(), ONEHOT) for x, t in zip(row, trow)) / 6
    assert loss == pytest.approx(hand, rel=1e-6)


@pytest.mark.parametrize("head", ["softmax", "bce"])
def test_focal_gamma_zero_is_the_plain_loss(head):
    soft = torch.tensor([[0.0, 0.3, 0.7], [1.0, 0.0, 0.0]])
    for target in (TARGET, soft):
        plain = create_criterion(head)(LOGITS, target)
        assert create_criterion(head, focal=True, focal_gamma=0.0)(LOGITS, target).item() == \
            pytest.approx(plain.item(), rel=1e-6)


# --- GHM -------------------------------------------------------------------------------------------

def ghm_weights(crit, logits, target):
    """The GHM modifier's weights for one call (the same context the loss builds)."""
    head = crit.head
    t = F.one_hot(target, logits.shape[1]).float()
    p = head.probs(logits)
    _, active = head.terms(logits, t)
    return crit.modifiers["ghm"](Terms(p=p, t=t, g=(p - t).abs(), active=active, labels=target, head=head))


def numpy_ghm(g, active, edges, acc=None, momentum=0.0):
    """Direct histogram: weights and the updated moving average."""
    counts, _ = np.histogram(g[active], bins=edges)
    bins = np.clip(np.searchsorted(edges, g, side="right") - 1, 0, len(counts) - 1)
    density = counts.astype(np.float64)
    if momentum > 0:
        acc = acc.copy()
        acc[counts > 0] = momentum * acc[counts > 0] + (1 - momentum) * counts[counts > 0]
        density = acc
    w = np.zeros_like(g)
    w[active] = active.sum() / density[bins[active]] / (counts > 0).sum()
    return w, acc


@pytest.mark.parametrize("head", ["softmax", "bce"])
def test_ghm_weights_equal_a_direct_histogram(head):
    gen = torch.Generator().manual_seed(0)
    logits, target = torch.randn(16, 5, generator=gen) * 2, torch.randint(0, 5, (16,), generator=gen)
    crit = create_criterion(head, ghm=True, ghm_bins=7, ghm_momentum=0.0)
    t = F.one_hot(target, 5).float()
    p = crit.head.probs(logits)
    g = (p - t).abs().double().numpy()
    active = (t > 0).numpy() if head == "softmax" else np.ones_like(g, dtype=bool)
    edges = crit.modifiers["ghm"].edges.double().numpy()
    assert edges[0] == 0 and edges[-1] == pytest.approx(1 + 1e-6) and len(edges) == 8
    expected, _ = numpy_ghm(g, active, edges)
    np.testing.assert_allclose(ghm_weights(crit, logits, target).double().numpy(), expected, rtol=1e-6)
    # and the loss uses them: sum of weighted terms, reduced as the head does
    terms, _ = crit.head.terms(logits, t)
    weighted = terms.double().numpy() * expected
    per_sample = weighted.sum(1) if head == "softmax" else weighted.mean(1)
    assert crit(logits, target).item() == pytest.approx(per_sample.mean(), rel=1e-5)


def test_ghm_momentum_two_calls_hand_computed():
    gen = torch.Generator().manual_seed(1)
    m = 0.75
    crit = create_criterion("bce", ghm=True, ghm_bins=5, ghm_momentum=m)
    edges = crit.modifiers["ghm"].edges.double().numpy()
    target = torch.randint(0, 4, (6,), generator=gen)
    # call 1 spreads g over the bins; call 2 (logits 0, g = 0.5 everywhere) fills bin 2 alone, so the
    # other bins must keep their average (mmdetection updates non-empty bins only)
    accs = [np.zeros(5)]
    for logits in (torch.randn(6, 4, generator=gen) * 2, torch.zeros(6, 4)):
        g = (logits.sigmoid() - F.one_hot(target, 4).float()).abs().double().numpy()
        expected, acc = numpy_ghm(g, np.ones_like(g, dtype=bool), edges, accs[-1], m)
        accs.append(acc)
        got = ghm_weights(crit, logits, target).double().numpy()
        np.testing.assert_allclose(got, expected, rtol=1e-5)
        np.testing.assert_allclose(crit.modifiers["ghm"].acc.double().numpy(), acc, rtol=1e-6)
    first, second = accs[1], accs[2]
    assert (first > 0).sum() >= 3 and (second[[0, 1, 3, 4]] == first[[0, 1, 3, 4]]).all()
    # call 2 by hand: 24 terms in bin 2, one non-empty bin -> weight 24 / (m acc1[2] + (1 - m) 24)
    assert got[0, 0] == pytest.approx(24 / (m * first[2] + (1 - m) * 24), rel=1e-6)
    # evaluation mode computes the same weights but leaves the moving average alone
    before = crit.modifiers["ghm"].acc.clone()
    crit.eval()
    crit(logits, target)
    assert torch.equal(crit.modifiers["ghm"].acc, before)


# --- OHM and threshold -----------------------------------------------------------------------------

def test_ohm_bce_keeps_the_hardest_terms():
    # g = |sigmoid(x) - t|: row 0: .018 .047 .622; row 1: .269 .119 .007 -> hardest 3 of 6 at ratio 0.5
    logits = torch.tensor([[4.0, -3.0, 0.5], [-1.0, 2.0, -5.0]])
    _, grad = grad_of(create_criterion("bce", ohm=True, ohm_ratio=0.5), logits, torch.tensor([0, 1]))
    kept = torch.tensor([[False, False, True], [True, True, False]])
    assert torch.all(grad[~kept] == 0) and torch.all(grad[kept] != 0)


def test_ohm_softmax_drops_the_easiest_sample():
    logits = torch.tensor([[4.0, 0.0, 0.0], [0.0, 0.0, 0.0], [1.0, 0.0, 0.0]])  # sample 0 is the easiest
    _, grad = grad_of(create_criterion("softmax", ohm=True, ohm_ratio=0.5), logits, torch.tensor([0, 0, 0]))
    assert torch.all(grad[0] == 0) and torch.all(grad[1:] != 0)


def test_ohm_count_is_ceil_without_float_error():
    logits = torch.linspace(-2, 2, 10).view(1, 10)  # 10 active terms: 0.7 * 10 keeps 7, not 8
    _, grad = grad_of(create_criterion("bce", ohm=True, ohm_ratio=0.7), logits, torch.tensor([0]))
    assert int((grad != 0).sum()) == 7


def test_threshold_bce_drops_confident_terms():
    # p = sigmoid: row 0 (true 0): .953 > .9 drop, .047 < .1 drop, .5 keep; row 1: all kept
    logits = torch.tensor([[3.0, -3.0, 0.0], [-1.0, 1.0, 4.0]])
    crit = create_criterion("bce", threshold=True, threshold_low=0.1, threshold_high=0.9)
    _, grad = grad_of(crit, logits, torch.tensor([0, 1]))
    dropped = torch.tensor([[True, True, False], [False, False, False]])
    assert torch.all(grad[dropped] == 0) and torch.all(grad[~dropped] != 0)


def test_threshold_softmax_drops_learnt_samples():
    logits = torch.tensor([[5.0, 0.0, 0.0], [0.0, 0.0, 0.0]])  # p_true = .987 and 1/3
    _, grad = grad_of(create_criterion("softmax", threshold=True), logits, torch.tensor([0, 0]))
    assert torch.all(grad[0] == 0) and torch.all(grad[1] != 0)


# --- every combination -----------------------------------------------------------------------------

MODIFIER_OPTIONS = {
    "class_weights": dict(class_weights=torch.tensor([0.5, 1.0, 2.0, 1.5])),
    "cost_matrix": dict(cost_matrix=torch.ones(4, 4) - torch.eye(4) + 0.1),
    "focal": dict(focal=True),
    "ghm": dict(ghm=True, ghm_bins=5),
    "ohm": dict(ohm=True),
    "threshold": dict(threshold=True),
}
COMBOS = [c for r in range(len(MODIFIER_OPTIONS) + 1) for c in itertools.combinations(MODIFIER_OPTIONS, r)]


def check_zero_weight_sample_gets_no_gradient(head, combo, target, label_smoothing=0.0):
    options = {k: v for name in combo for k, v in MODIFIER_OPTIONS[name].items()}
    logits = torch.randn(5, 4, generator=torch.Generator().manual_seed(2)) * 0.5
    crit = create_criterion(head, label_smoothing=label_smoothing, **options)
    loss, grad = grad_of(crit, logits, target, weight=torch.tensor([0.0, 1.0, 1.0, 2.0, 1.0]))
    assert torch.isfinite(loss) and torch.isfinite(grad).all()
    assert torch.all(grad[0] == 0)
    assert torch.any(grad[1:] != 0)


@pytest.mark.parametrize("combo", COMBOS, ids=lambda c: "+".join(c) or "plain")
@pytest.mark.parametrize("head", ["softmax", "bce"])
def test_every_combination_takes_soft_targets_and_zero_weight_means_no_gradient(head, combo):
    mixup = torch.tensor([[0.3, 0.7, 0, 0], [0, 0.3, 0.7, 0], [0.7, 0, 0, 0.3], [0, 0, 0.3, 0.7], [0.7, 0.3, 0, 0]])
    check_zero_weight_sample_gets_no_gradient(head, combo, mixup)


@pytest.mark.parametrize("combo", [(name,) for name in MODIFIER_OPTIONS] + [tuple(MODIFIER_OPTIONS)],
                         ids=lambda c: "+".join(c))
@pytest.mark.parametrize("head", ["softmax", "bce"])
@pytest.mark.parametrize("eps", [0.0, 0.1])
def test_hard_targets_zero_weight_means_no_gradient(head, combo, eps):
    check_zero_weight_sample_gets_no_gradient(head, combo, torch.tensor([1, 2, 0, 3, 0]), label_smoothing=eps)


# --- argument validation ---------------------------------------------------------------------------

@pytest.mark.parametrize("options, message", [
    (dict(ghm=True, ghm_bins=0), "ghm_bins must be an integer >= 1"),
    (dict(ghm=True, ghm_momentum=1.0), r"ghm_momentum must be in \[0, 1\)"),
    (dict(ghm=True, ghm_momentum=-0.1), r"ghm_momentum must be in \[0, 1\)"),
    (dict(ohm=True, ohm_ratio=0.0), r"ohm_ratio must be in \(0, 1\]"),
    (dict(ohm=True, ohm_ratio=1.5), r"ohm_ratio must be in \(0, 1\]"),
    (dict(threshold=True, threshold_low=0.5, threshold_high=0.5), "threshold_low < threshold_high"),
    (dict(threshold=True, threshold_high=1.2), "threshold_high <= 1"),
    (dict(focal=True, focal_gamma=-1.0), "focal_gamma must be >= 0"),
    (dict(class_weights=torch.ones(2, 2)), "class_weights must be a 1-D tensor"),
    (dict(class_weights=torch.tensor([1.0, -1.0, 1.0])), "class_weights must not hold negative"),
    (dict(cost_matrix=torch.ones(3, 2)), "cost_matrix must be square"),
    (dict(label_smoothing=1.5), r"label_smoothing must be in \[0, 1\]"),
])
def test_bad_arguments_raise_clear_errors(options, message):
    with pytest.raises(ValueError, match=message):
        create_criterion("bce", **options)


@pytest.mark.parametrize("options, message", [
    (dict(class_weights=torch.ones(4)), "class_weights is for 4 classes but the logits have 3"),
    (dict(cost_matrix=torch.ones(2, 2)), "cost_matrix is for 2 classes but the logits have 3"),
])
def test_sizes_checked_against_the_logits(options, message):
    with pytest.raises(ValueError, match=message):
        create_criterion("softmax", **options)(LOGITS, TARGET)


def test_unknown_head_lists_the_valid_ones():
    with pytest.raises(ValueError, match="unknown criterion 'hinge'; choose from softmax, bce"):
        create_criterion("hinge")


# --- loading class weights and cost matrices -------------------------------------------------------

def test_load_class_weights_list_file_inline_and_auto(tmp_path):
    assert load_class_weights([1, 2.5, 0], [3, 3, 3]).tolist() == [1.0, 2.5, 0.0]
    path = tmp_path / "w.txt"
    path.write_text("# weights\n1.0, 2\n0.5\n")
    assert load_class_weights(str(path), [1, 1, 1]).tolist() == [1.0, 2.0, 0.5]
    assert load_class_weights("1,2,0.5", [1, 1, 1]).tolist() == [1.0, 2.0, 0.5]
    # inverse frequency of 10, 30, 60 is .1, .0333, .01667 with mean .05 -> 2, 2/3, 1/3
    auto = load_class_weights("auto", [10, 30, 60])
    assert auto.tolist() == pytest.approx([2.0, 2 / 3, 1 / 3], rel=1e-6)
    assert auto.mean().item() == pytest.approx(1.0)


def test_load_class_weights_errors(tmp_path):
    bad = tmp_path / "bad.txt"
    bad.write_text("1 x 2\n")
    neg = tmp_path / "neg.txt"
    neg.write_text("1 -2 3\n")
    cases = [
        (([1, 2], [5, 5, 5]), r"--class_weights: the given list has 2 weights but the dataset has 3 classes"),
        ((str(bad), [5, 5, 5]), r"--class_weights: .*bad\.txt, line 1: 'x' is not a number"),
        ((["a", 1, 2], [5, 5, 5]), r"--class_weights: the given list: 'a' is not a number"),
        ((str(neg), [5, 5, 5]), r"--class_weights: .*neg\.txt, line 1: '-2' is negative"),
        (([1, -2, 3], [5, 5, 5]), r"--class_weights: the given list: -2 is negative"),
        (("auto", [5, 0, 5]), r"--class_weights auto: class\(es\) \[1\] have no samples"),
        ((str(tmp_path / "missing.txt"), [5, 5, 5]), r"--class_weights: file not found: .*missing\.txt"),
    ]
    for args, message in cases:
        with pytest.raises(ValueError, match=message):
            load_class_weights(*args)


def test_load_cost_matrix(tmp_path):
    good = tmp_path / "cost.txt"
    good.write_text("0 1 2\n3,0,4\n\n5, 6, 0  # last row\n")
    assert load_cost_matrix(good, 3).tolist() == M
    crit = create_criterion("bce", cost_matrix=load_cost_matrix(good, 3))
    assert crit(LOGITS, TARGET).item() == pytest.approx(
        create_criterion("bce", cost_matrix=torch.tensor(M))(LOGITS, TARGET).item())


def test_load_cost_matrix_errors(tmp_path):
    short = tmp_path / "short.txt"
    short.write_text("0 1 2\n3 0\n5 6 0\n")
    word = tmp_path / "word.txt"
    word.write_text("0 1 2\n3 0 4\n5 six 0\n")
    rows = tmp_path / "rows.txt"
    rows.write_text("0 1 2\n3 0 4\n")
    cases = [
        (short, r"--cost_matrix: .*short\.txt, row 2 \(line 2\) has 2 numbers, expected 3"),
        (word, r"--cost_matrix: .*word\.txt, row 3 \(line 3\): 'six' is not a number"),
        (rows, r"--cost_matrix: .*rows\.txt has 2 rows, expected 3"),
        (tmp_path / "missing.txt", r"--cost_matrix: file not found"),
    ]
    for path, message in cases:
        with pytest.raises(ValueError, match=message):
            load_cost_matrix(path, 3)
