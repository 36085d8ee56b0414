"""utils/checkpoint.py: atomic writes, safe loads, RNG state round trips."""
from __future__ import annotations

import os
import random

import numpy as np
import pytest
import torch

from utils.checkpoint import (CheckpointError, capture_rng_state, load_checkpoint, previous_path,
                              restore_rng_state, save_checkpoint)


def test_failed_write_leaves_the_previous_checkpoint(tmp_path):
    path = tmp_path / "last.pth"
    save_checkpoint({"epoch": 1, "w": torch.ones(3)}, path)
    with pytest.raises(Exception):
        save_checkpoint({"epoch": 2, "bad": lambda: None}, path)  # a lambda cannot be pickled
    assert load_checkpoint(path)["epoch"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pth"]  # no temporary file left


def test_keep_previous(tmp_path):
    path = tmp_path / "last.pth"
    save_checkpoint({"epoch": 1}, path, keep_previous=True)
    save_checkpoint({"epoch": 2}, path, keep_previous=True)
    assert load_checkpoint(path)["epoch"] == 2 and load_checkpoint(previous_path(path))["epoch"] == 1


def test_truncated_file_is_reported(tmp_path):
    path = tmp_path / "last.pth"
    save_checkpoint({"w": torch.randn(1000)}, path)
    path.write_bytes(path.read_bytes()[:500])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "none.pth")


def test_rng_state_round_trip_through_a_safe_load(tmp_path):
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    save_checkpoint({"rng": capture_rng_state()}, tmp_path / "c.pth")
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    restore_rng_state(load_checkpoint(tmp_path / "c.pth")["rng"])
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected


def test_link_checkpoint_shares_the_file_and_survives_replacing_the_source(tmp_path):
    from utils.checkpoint import link_checkpoint, save_checkpoint
    last, best = tmp_path / "last.pth", tmp_path / "best.pth"
    save_checkpoint({"epoch": 1, "w": torch.arange(4.0)}, last)
    link_checkpoint(last, best)
    assert os.path.samefile(last, best)  # one file, written once
    save_checkpoint({"epoch": 2, "w": torch.zeros(4)}, last, keep_previous=True)
    assert load_checkpoint(best)["epoch"] == 1 and load_checkpoint(last)["epoch"] == 2
    assert not list(tmp_path.glob(".*tmp*"))
