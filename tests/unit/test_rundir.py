"""utils/rundir.py: a run directory created, held, cleared, and removed again by a run that fails early."""
from __future__ import annotations

import pytest

from utils.rundir import OPEN_RUN_FILES, clear_dir, has_checkpoint, own_run_dir
from utils.runlock import LOCK_NAME


def test_a_failure_before_the_first_checkpoint_removes_the_folders_it_created(tmp_path):
    run_dir = tmp_path / "out" / "arch" / "tag"
    with pytest.raises(RuntimeError), own_run_dir(run_dir):
        assert (run_dir / LOCK_NAME).exists()
        (run_dir / "log.txt").write_text("started\n")
        raise RuntimeError("failed at start-up")
    assert list(tmp_path.iterdir()) == []  # out/, arch/ and tag/ were all this run's


def test_a_failure_after_a_checkpoint_keeps_the_folder(tmp_path):
    run_dir = tmp_path / "run"
    with pytest.raises(RuntimeError), own_run_dir(run_dir):
        (run_dir / "checkpoints").mkdir()
        (run_dir / "checkpoints" / "last.pth").write_bytes(b"x")
        raise RuntimeError("failed at epoch 2")
    assert has_checkpoint(run_dir) and (run_dir / "checkpoints" / "last.pth").is_file()


def test_a_folder_that_was_there_loses_only_the_log_this_run_started(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "notes.txt").write_text("mine")
    with pytest.raises(RuntimeError), own_run_dir(run_dir):
        (run_dir / "log.txt").write_text("started\n")
        raise RuntimeError("failed at start-up")
    assert sorted(p.name for p in run_dir.iterdir() if p.name != LOCK_NAME) == ["notes.txt"]


def test_clear_dir_keeps_what_it_is_told_and_never_follows_a_link(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious.txt").write_text("keep me")
    folder = tmp_path / "run"
    (folder / "checkpoints").mkdir(parents=True)
    (folder / "checkpoints" / "last.pth").write_bytes(b"x")
    (folder / "log.txt").write_text("log")
    (folder / "link").symlink_to(outside, target_is_directory=True)
    clear_dir(folder, keep=OPEN_RUN_FILES)
    assert [p.name for p in folder.iterdir()] == ["log.txt"]
    assert (outside / "precious.txt").read_text() == "keep me"
