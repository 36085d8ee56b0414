"""--train, --lr_finder and the sweep-variants test build their parts through the one
``build_training_parts``, and get the same parts for the same config.

Each mode runs with a spy in place of its builder: the spy records the real builder's parts and stops the run
(a mode that no longer calls the builder is never spied on, and its run does not stop there: the test fails)."""
from __future__ import annotations

import copy

import pytest
import torch

from applications import lr_finder, train
from helpers import strategy_variant_parts


class Built(Exception):
    """Raised by the spy once the parts are built: the run goes no further."""


def _parts_of(module, cfg, monkeypatch):
    """The parts ``module.run(cfg)`` builds (through ``module.build_training_parts``)."""
    seen = []
    real = module.build_training_parts

    def spy(*args, **kwargs):
        seen.append(real(*args, **kwargs))
        raise Built

    monkeypatch.setattr(module, "build_training_parts", spy)
    with pytest.raises(Built):
        module.run(copy.deepcopy(cfg))
    monkeypatch.undo()
    (parts,) = seen
    return parts


def _groups(optimizer):
    return [({k: v for k, v in g.items() if k not in ("params", "lr", "initial_lr")},
             [tuple(p.shape) for p in g["params"]]) for g in optimizer.param_groups]


def _assert_same_parts(a, b):
    """What a training step reads: the model and its initial weights, the data, loss, hook, optimizer, precision."""
    assert type(a.model) is type(b.model)
    sa, sb = a.model.state_dict(), b.model.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    assert type(a.optimizer) is type(b.optimizer) and _groups(a.optimizer) == _groups(b.optimizer)
    assert repr(a.criterion) == repr(b.criterion)
    assert len(a.train_set) == len(b.train_set) and repr(a.train_set.transform) == repr(b.train_set.transform)
    assert type(a.batch_hook) is type(b.batch_hook)
    if a.batch_hook is not None:
        assert type(a.batch_hook.mixer) is type(b.batch_hook.mixer)
    assert torch.equal(a.preprocess.scale, b.preprocess.scale) and torch.equal(a.preprocess.shift, b.preprocess.shift)
    assert (a.dtype, a.accumulation_steps) == (b.dtype, b.accumulation_steps)


@pytest.mark.parametrize("tag", ["randaugment_mixup", "bce_ghm_clipped"])
def test_train_lr_finder_and_the_sweep_test_get_the_same_parts(tag, tiny_data, tmp_path, monkeypatch):
    cfg, swept = strategy_variant_parts(tag, tiny_data["folder"], tmp_path / "sweep")
    cfg.output = str(tmp_path / "runs")
    trained = _parts_of(train, cfg, monkeypatch)
    _assert_same_parts(trained, swept)
    # --train's own options too: validation, schedule, EMA, clipping, freezing, scaler
    assert len(trained.val_set) == len(swept.val_set) and repr(trained.val_criterion) == repr(swept.val_criterion)
    assert type(trained.scheduler) is type(swept.scheduler) and trained.steps_per_epoch == swept.steps_per_epoch
    assert (trained.clip_grad, trained.frozen, trained.scaler, trained.ema) == (swept.clip_grad, None, None, None)
    assert swept.ema is None and swept.frozen is None and swept.scaler is None
    ranged = _parts_of(lr_finder, cfg, monkeypatch)
    _assert_same_parts(ranged, swept)
    # the LR range test leaves out --train's own options (it sets its own schedule)
    assert (ranged.val_set, ranged.scheduler, ranged.ema, ranged.scaler, ranged.clip_grad) == (None,) * 5


def test_the_builder_follows_the_training_flags(tiny_data, tmp_path):
    from applications.setup.training import build_training_parts
    from dataloader import read_class_names
    from helpers import strategy_variant_cfg
    from utils.distributed import DistInfo
    cfg = strategy_variant_cfg("baseline", tiny_data["folder"], tmp_path)
    cfg.ema, cfg.freeze_backbone, cfg.accumulation_steps, cfg.clip_grad = True, True, 2, 1.0
    cfg.swa_epochs = 1
    parts = build_training_parts(cfg, read_class_names(tiny_data["folder"], "folder"), DistInfo(), lr=0.05)
    assert parts.ema is not None and parts.frozen is not None
    # the SWA copy is of the unfrozen model: its batch norms train and are recomputed at the end
    assert all(p.requires_grad for p in parts.swa.module.parameters())
    assert not any(m._forward_pre_hooks for m in parts.swa.module.modules())
    assert (parts.accumulation_steps, parts.clip_grad) == (2, 1.0)
    assert parts.steps_per_epoch == 2  # 30 images in batches of 8: 4 batches, 2 per step
    assert {g["initial_lr"] for g in parts.optimizer.param_groups} == {0.05}  # the given LR, scheduled
    assert parts.net() is parts.model  # one process, not compiled
    trainable = {n for n, p in parts.model.named_parameters() if p.requires_grad}
    parts.unfreeze()
    assert parts.frozen is None and trainable < {n for n, p in parts.model.named_parameters() if p.requires_grad}
