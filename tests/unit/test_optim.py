"""optim/: parameter groups and schedules checked against hand-computed values."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn

from optim import create_optimizer, create_scheduler, lr_factor, param_groups


def test_no_weight_decay_on_biases_and_norm_weights():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4, 2))
    decay, no_decay = param_groups(model, 0.05)
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    assert {id(p) for p in decay["params"]} == {id(model[0].weight), id(model[3].weight)}
    assert {id(p) for p in no_decay["params"]} == {id(model[0].bias), id(model[1].weight), id(model[1].bias),
                                                  id(model[3].bias)}


@pytest.mark.parametrize("name, cls", [("sgd", torch.optim.SGD), ("adam", torch.optim.Adam),
                                       ("adamw", torch.optim.AdamW), ("radam", torch.optim.RAdam)])
def test_optimizers_by_name(name, cls):
    opt = create_optimizer(nn.Linear(3, 2), name, lr=0.01, weight_decay=1e-4, momentum=0.8, nesterov=True)
    assert isinstance(opt, cls) and opt.param_groups[0]["lr"] == 0.01
    if name == "sgd":
        assert opt.param_groups[0]["momentum"] == 0.8 and opt.param_groups[0]["nesterov"]


def test_unknown_optimizer():
    with pytest.raises(ValueError, match="unknown optimizer 'lion'; choose from sgd, adam, adamw, radam"):
        create_optimizer(nn.Linear(2, 2), "lion")


def test_warmup_is_linear():
    assert [lr_factor(s, total_steps=100, warmup_steps=4) for s in range(5)] == [0.25, 0.5, 0.75, 1.0, 1.0]


def test_step_schedule_boundaries():
    # 4 warm-up steps, 80 steps after: switches at 4 + 30, 4 + 50 and 4 + 70
    f = lambda s: lr_factor(s, total_steps=84, warmup_steps=4, schedule="step")  # noqa: E731
    assert f(33) == 1.0 and f(34) == pytest.approx(0.1) and f(53) == pytest.approx(0.1)
    assert f(54) == pytest.approx(0.01) and f(73) == pytest.approx(0.01) and f(74) == pytest.approx(0.001)


def test_cosine_schedule_values():
    f = lambda s: lr_factor(s, total_steps=110, warmup_steps=10, schedule="cosine")  # noqa: E731
    assert f(10) == 1.0 and f(60) == pytest.approx(0.5) and f(110) == pytest.approx(0.0, abs=1e-12)
    assert f(35) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.25)))


def test_scheduler_drives_the_optimizer_and_resumes():
    opt = create_optimizer(nn.Linear(2, 2), "sgd", lr=0.2)
    sched = create_scheduler(opt, schedule="cosine", total_steps=10, warmup_steps=2)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.1)
    lrs = []
    for _ in range(5):
        opt.step(), sched.step()
        lrs.append(opt.param_groups[0]["lr"])
    assert lrs[0] == pytest.approx(0.2) and lrs[-1] == pytest.approx(0.2 * lr_factor(5, total_steps=10, warmup_steps=2))
    opt2 = create_optimizer(nn.Linear(2, 2), "sgd", lr=0.2)
    sched2 = create_scheduler(opt2, schedule="cosine", total_steps=10, warmup_steps=2)
    sched2.load_state_dict(sched.state_dict())
    opt2.step(), sched2.step(), opt.step(), sched.step()
    assert opt2.param_groups[0]["lr"] == pytest.approx(opt.param_groups[0]["lr"])


@pytest.mark.parametrize("name", ["nadam", "lamb", "ranger"])
def test_more_optimizers_train_a_least_squares_problem(name):
    torch.manual_seed(0)
    model = nn.Linear(4, 1)
    x = torch.randn(64, 4)
    y = x @ torch.tensor([[1.0], [-2.0], [0.5], [3.0]]) + 0.7
    opt = create_optimizer(model, name, lr=0.1)
    first = None
    for _ in range(300):
        loss = ((model(x) - y) ** 2).mean()
        first = first if first is not None else loss.item()
        opt.zero_grad(), loss.backward(), opt.step()
    assert loss.item() < 0.05 * first


def test_lookahead_wraps_any_optimizer_and_interpolates():
    from timm.optim import Lookahead
    torch.manual_seed(0)
    model = nn.Linear(3, 1, bias=False)
    start = model.weight.detach().clone()
    opt = create_optimizer(model, "sgd", lr=0.1, momentum=0.0, lookahead=True, lookahead_alpha=0.5, lookahead_k=2)
    assert isinstance(opt, Lookahead)
    assert isinstance(create_optimizer(model, "ranger", lr=0.1), Lookahead)
    grad = torch.tensor([[1.0, 2.0, 3.0]])
    for _ in range(4):  # constant gradient: each SGD step moves the fast weights by -0.1 * grad
        model.weight.grad = grad.clone()
        opt.step()
    # by hand: the slow weights start at `start`; step 2: fast = start - 0.2 g, slow = start + 0.5 (-0.2 g)
    # = start - 0.1 g, fast := slow; step 4: fast = start - 0.3 g, slow = start - 0.1 g + 0.5 (-0.2 g)
    assert torch.allclose(model.weight, start - 0.2 * grad, atol=1e-6)


def test_ranger_pulls_back_at_its_first_sync_unlike_radam():
    """ranger = RAdam inside Lookahead: equal to radam for k - 1 steps, then the first synchronisation
    puts the weights at start + alpha (fast - start), not at radam's fast weights."""
    torch.manual_seed(0)
    x, y = torch.randn(16, 3), torch.randn(16, 1)
    models, opts = {}, {}
    for name in ("radam", "ranger"):
        torch.manual_seed(1)
        models[name] = nn.Linear(3, 1)
        opts[name] = create_optimizer(models[name], name, lr=0.05, lookahead_alpha=0.5, lookahead_k=3)
    start = [p.detach().clone() for p in models["ranger"].parameters()]
    for step in range(1, 4):
        for name in models:
            loss = ((models[name](x) - y) ** 2).mean()
            opts[name].zero_grad(), loss.backward(), opts[name].step()
        fast, ranger = list(models["radam"].parameters()), list(models["ranger"].parameters())
        if step < 3:
            assert all(torch.equal(a, b) for a, b in zip(fast, ranger))
    for s, f, r in zip(start, fast, ranger):
        assert not torch.allclose(r, f)
        assert torch.allclose(r, s + 0.5 * (f - s), atol=1e-7)
    # the slow copy is in the state dict, so a resumed run continues from it
    slow = [opts["ranger"].state_dict()["state"][i]["lookahead_slow_buff"] for i in range(2)]
    assert all(torch.equal(a, b) for a, b in zip(slow, ranger))


def test_multistep_schedule_with_ratios():
    f = lambda s: lr_factor(s, total_steps=100, warmup_steps=0, schedule="multistep",  # noqa: E731
                            milestones=[30, 60, 90], ratios=[0.1, 0.01, 0.001])
    assert [f(s) for s in (0, 29, 30, 59, 60, 89, 90, 99)] == [1, 1, 0.1, 0.1, 0.01, 0.01, 0.001, 0.001]
    # --lr_steps also override the default step schedule; without ratios each milestone divides by 10
    g = lambda s: lr_factor(s, total_steps=100, schedule="step", milestones=[10, 20])  # noqa: E731
    assert (g(9), g(10), g(20)) == (1.0, pytest.approx(0.1), pytest.approx(0.01))


def test_poly_schedule():
    f = lambda s: lr_factor(s, total_steps=12, warmup_steps=2, schedule="poly", power=2.0)  # noqa: E731
    assert f(2) == 1.0 and f(7) == pytest.approx(0.25) and f(12) == 0.0


def test_onecycle_matches_torch():
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    ref = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1.0, total_steps=40, pct_start=0.25)
    for step in range(40):
        assert lr_factor(step, total_steps=40, schedule="onecycle", pct_start=0.25) == \
            pytest.approx(opt.param_groups[0]["lr"], rel=1e-9, abs=1e-12)
        opt.step(), ref.step()


def test_multistep_needs_milestones_and_matching_ratios():
    opt = create_optimizer(nn.Linear(2, 2), "sgd", lr=0.1)
    with pytest.raises(ValueError, match="needs milestones"):
        create_scheduler(opt, schedule="multistep", total_steps=10, warmup_steps=0)
    with pytest.raises(ValueError, match="--lr_ratios has 1 values but --lr_steps has 2"):
        create_scheduler(opt, schedule="multistep", total_steps=10, warmup_steps=0, milestones=[2, 4], ratios=[0.1])


def test_ema_is_the_exponential_average():
    from optim import ModelEma
    model = nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(1.0)
    ema = ModelEma(model, decay=0.5)
    for value in (3.0, 5.0):
        with torch.no_grad():
            model.weight.fill_(value)
        ema.update(model)
    # 1 -> 0.5 * 1 + 0.5 * 3 = 2 -> 0.5 * 2 + 0.5 * 5 = 3.5
    assert torch.allclose(ema.module.weight, torch.full((1, 2), 3.5))
    assert not any(p.requires_grad for p in ema.module.parameters())
