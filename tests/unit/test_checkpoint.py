"""utils/checkpoint.py: atomic writes, safe loads, RNG state round trips."""
from __future__ import annotations

import os
import random

import numpy as np
import pytest
import torch

from utils.checkpoint import (
    CheckpointError,
    capture_rng_state,
    load_checkpoint,
    previous_path,
    restore_rng_state,
    save_checkpoint,
)


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


class _Evil:
    def __reduce__(self):
        return os.system, ("echo pwned",)


@pytest.mark.parametrize("content, kind", [
    (b"hello world\nthis is text\n", "text (torch raised KeyError: 101)"),
    (bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8)), "random bytes"),
    (b"\x80\x04\x95" + bytes(20), "a plain pickle, not torch.save output"),
], ids=["text", "random-bytes", "plain-pickle"])
def test_a_file_that_is_no_checkpoint_is_called_that(tmp_path, content, kind):
    path = tmp_path / "model.pth"
    path.write_bytes(content)
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(path)
    assert f"{path} is not a PyTorch checkpoint" in str(e.value), kind
    assert "weights_only=False" not in str(e.value) and "arbitrary code" not in str(e.value)


def test_empty_file_and_foreign_zip(tmp_path):
    import zipfile
    (tmp_path / "empty.pth").write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty.pth is empty: not a PyTorch checkpoint"):
        load_checkpoint(tmp_path / "empty.pth")
    with zipfile.ZipFile(tmp_path / "photos.zip", "w") as z:
        z.writestr("a.txt", "x")
    with pytest.raises(CheckpointError, match="photos.zip is a zip archive but not a PyTorch checkpoint"):
        load_checkpoint(tmp_path / "photos.zip")


@pytest.mark.parametrize("legacy", [False, True])
def test_a_malicious_checkpoint_names_the_refused_global_and_never_advises_weights_only_false(tmp_path, legacy):
    path = tmp_path / "evil.pth"
    torch.save({"model": {}, "payload": _Evil()}, path, _use_new_zipfile_serialization=not legacy)
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(path)
    message = str(e.value)
    assert f"cannot be loaded safely (weights_only=True): unpickling it would import and call " \
           f"{os.system.__module__}.system" in message
    assert "weights_only=False" not in message and "weights_only` set to `False" not in message


_FILL_DISK = """
import torch
from utils.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
path = {path!r}
save_checkpoint({{"epoch": 1, "w": torch.zeros(1000)}}, path, keep_previous=True)
try:
    save_checkpoint({{"epoch": 2, "w": torch.zeros(2_000_000)}}, path, keep_previous=True)  # 8 MB: over the limit
except CheckpointError as e:
    print(e)
print("epoch", load_checkpoint(path)["epoch"])
"""


def _fill_the_disk(path, **popen) -> list[str]:
    """Save a small checkpoint, then a big one that does not fit, in a real process; its output lines."""
    import subprocess
    import sys

    from helpers import project_env
    r = subprocess.run([sys.executable, "-c", _FILL_DISK.format(path=str(path))],
                       capture_output=True, text=True, timeout=300, env=project_env(), **popen)
    assert r.returncode == 0, r.stderr[-3000:]
    return r.stdout.splitlines()


def test_a_full_disk_while_saving_is_reported_and_keeps_the_old_checkpoint(tmp_path):
    """A 1 MB file-size limit (RLIMIT_FSIZE, SIGXFSZ ignored: writes past it fail with EFBIG, as a full
    disk fails with ENOSPC): torch.save used to say only 'unexpected pos ...'."""
    import resource
    import signal

    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))

    path = tmp_path / "last.pth"
    error, epoch = _fill_the_disk(path, preexec_fn=limit)
    assert error.startswith(f"cannot write checkpoint {path}: File too large (write failed; the previous "
                            f"last.pth is kept)"), error
    assert epoch == "epoch 1"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pth"]  # no temporary file left


def test_a_full_tmpfs_while_saving_is_reported_and_keeps_the_old_checkpoint(tmp_path):
    """The same on a real 1 MB file system (needs the right to mount one: root in this container)."""
    import subprocess
    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(disk)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here")
    try:
        error, epoch = _fill_the_disk(disk / "last.pth")
        assert error.startswith(f"cannot write checkpoint {disk / 'last.pth'}: No space left on device (write "
                                f"failed; the previous last.pth is kept)"), error
        assert epoch == "epoch 1" and sorted(p.name for p in disk.iterdir()) == ["last.pth"]
    finally:
        subprocess.run(["umount", str(disk)], check=True)


def test_checkpoint_spec_names_only_values_the_user_set(caplog):
    """Inference takes the checkpoint's preprocessing; it says so only where the user asked for another
    value (it printed "the command line had [224, 224]" when nothing was typed)."""
    import logging

    import config
    from applications.setup.common import checkpoint_spec
    from models.spec import ModelSpec
    spec = ModelSpec("resnet18", ("a", "b"), (48, 48), (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), interpolation="bicubic")
    ckpt = {"model_spec": spec.to_dict()}
    caplog.set_level(logging.INFO)
    assert checkpoint_spec(ckpt, config.parse_config(["--evaluation", "--resume", "x.pth"]), []) == spec
    assert "using the checkpoint's" not in caplog.text
    cfg = config.parse_config(["--evaluation", "--resume", "x.pth", "--image_size", "32", "32"])
    assert checkpoint_spec(ckpt, cfg, []) == spec
    lines = [r.getMessage() for r in caplog.records if "using the checkpoint's" in r.getMessage()]
    assert lines == ["using the checkpoint's image_size=[48, 48] (the command line had [32, 32])"]
