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
