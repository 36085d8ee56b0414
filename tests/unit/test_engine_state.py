"""engine/state.py: the train state saved and restored as one pair, and the checkpoint folder."""
from __future__ import annotations

import os

import pytest
import torch
import torch.nn as nn

from engine.state import CheckpointSaver, Progress, TrainState
from models.spec import ModelSpec
from optim import ModelEma
from utils.checkpoint import CheckpointError, load_checkpoint, previous_path

SPEC = ModelSpec("tiny", ["a", "b"], (8, 8), mean=(0.5, 0.5, 0.5), std=(0.2, 0.2, 0.2))


def parts(seed: int) -> TrainState:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Linear(8, 2))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
    return TrainState(model, optimizer, scheduler, ema=ModelEma(model, 0.9))


def trained(seed: int = 0, steps: int = 3) -> TrainState:
    state = parts(seed)
    for _ in range(steps):
        state.model(torch.randn(6, 4)).square().mean().backward()
        state.optimizer.step()
        state.scheduler.step()
        state.ema.update(state.model)
    return state


def test_restore_is_the_mirror_of_capture(tmp_path):
    state = trained()
    saved = state.capture(epoch=4, best_top1=61.5, best_epoch=3, spec=SPEC, config={"lr": 0.1},
                          history=[{"epoch": 0}, {"epoch": 1}])
    saver = CheckpointSaver(tmp_path / "checkpoints")
    saver.save(saved)
    ckpt, path = saver.load_resume(saver.last)
    assert ckpt["model_spec"] == SPEC.to_dict() and ckpt["class_names"] == ["a", "b"] and ckpt["arch"] == "tiny"

    fresh = parts(seed=1)
    progress = fresh.restore(ckpt, path, class_names=["a", "b"])
    assert progress == Progress(start_epoch=5, best_top1=61.5, best_epoch=3, history=[{"epoch": 0}, {"epoch": 1}])
    for a, b in zip(state.model.state_dict().values(), fresh.model.state_dict().values()):
        assert torch.equal(a, b)
    for a, b in zip(state.ema.module.state_dict().values(), fresh.ema.module.state_dict().values()):
        assert torch.equal(a, b)
    assert fresh.scheduler.state_dict() == state.scheduler.state_dict()
    momentum = [fresh.optimizer.state[p]["momentum_buffer"] for p in fresh.model.parameters()]
    assert all(torch.equal(m, state.optimizer.state[p]["momentum_buffer"])
               for m, p in zip(momentum, state.model.parameters()))


def test_restore_mid_epoch_takes_this_ranks_running_sums():
    state = trained()
    saved = state.capture(epoch=1, best_top1=50.0, best_epoch=1, spec=SPEC, config={}, history=[])
    saved["resume_at"] = {"epoch": 2, "batch": 7, "partial": [{"loss": 1.0}, {"loss": 2.0}]}
    progress = parts(1).restore(saved, "x.pth", class_names=["a", "b"], rank=1, world_size=2)
    assert (progress.start_epoch, progress.start_batch, progress.partial) == (2, 7, {"loss": 2.0})
    other_world = parts(1).restore(saved, "x.pth", class_names=["a", "b"], rank=0, world_size=3)
    assert other_world.partial is None  # a different number of processes starts the epoch's sums afresh


def test_restore_refuses_other_classes_and_weights_only():
    saved = trained().capture(epoch=0, best_top1=0.0, best_epoch=0, spec=SPEC, config={}, history=[])
    with pytest.raises(CheckpointError, match="trained on classes"):
        parts(1).restore(saved, "x.pth", class_names=["a", "c"])
    with pytest.raises(CheckpointError, match="weights only"):
        parts(1).restore({"model": saved["model"], "class_names": ["a", "b"]}, "x.pth", class_names=["a", "b"])


def test_saver_links_best_and_restores_the_link(tmp_path):
    saver, state = CheckpointSaver(tmp_path), trained()
    for epoch, best in ((0, True), (1, False)):
        saver.save(state.capture(epoch=epoch, best_top1=1.0, best_epoch=0, spec=SPEC, config={}, history=[]), best)
    assert load_checkpoint(saver.best)["epoch"] == 0 and load_checkpoint(saver.last)["epoch"] == 1
    saver.best.unlink()  # a run killed between saving last.pth and linking best.pth
    saver.restore_best_link(best_epoch=0)
    assert os.path.samefile(saver.best, previous_path(saver.last)) and load_checkpoint(saver.best)["epoch"] == 0
    saver.best.unlink()
    ckpt, path = saver.load_best()  # no best.pth: the last weights
    assert path == saver.last and ckpt["epoch"] == 1


def test_saver_resumes_from_the_previous_checkpoint_when_last_is_damaged(tmp_path):
    saver, state = CheckpointSaver(tmp_path), trained()
    for epoch in (0, 1):
        saver.save(state.capture(epoch=epoch, best_top1=1.0, best_epoch=0, spec=SPEC, config={}, history=[]))
    saver.last.write_bytes(saver.last.read_bytes()[:300])
    ckpt, path = saver.load_resume(saver.last)
    assert path == previous_path(saver.last) and ckpt["epoch"] == 0


def test_saver_owns_the_best(tmp_path):
    """The rows of test_best_selection's replay through the saver: best.pth ends at the epoch the rule picks."""
    rows = [(50.0, 2.0), (97.0, 0.30), (99.0, 0.25), (98.0, 0.10), (99.0, 0.20), (99.0, 0.22), (99.0, 0.15)]
    saver, state, history = CheckpointSaver(tmp_path), trained(), []
    for epoch, (top1, loss) in enumerate(rows):
        is_best = saver.update_best(epoch, top1, loss, history)
        history.append({"epoch": epoch, "val_top1": top1, "val_loss": loss})
        saver.save(state.capture(epoch=epoch, best_top1=saver.best_top1, best_epoch=saver.best_epoch, spec=SPEC,
                                 config={}, history=history), is_best)
    assert (saver.best_top1, saver.best_epoch) == (99.0, 6) and load_checkpoint(saver.best)["epoch"] == 6
    # a resumed run's saver adopts the recorded best and relinks best.pth to it (here last.pth.prev, epoch 5)
    resumed = CheckpointSaver(tmp_path)
    resumed.adopt(Progress(start_epoch=7, best_top1=99.0, best_epoch=5, history=history))
    resumed.tidy(resumed.last)
    assert os.path.samefile(resumed.best, previous_path(resumed.last)) and load_checkpoint(resumed.best)["epoch"] == 5
    assert not resumed.update_best(7, 99.0, 0.23, history)  # a tie with a higher loss than epoch 5's 0.22
    assert resumed.update_best(7, 99.0, 0.21, history) and resumed.best_epoch == 7
