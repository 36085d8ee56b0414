"""A tampered file in any library's cache is refused by ``main.py --train --pretrained imagenet`` with one
line naming it, and its payload never runs (#25 item 1: torch.hub's loader unpickled it). Real processes,
the caches in tmp_path, downloads forbidden (HF_HUB_OFFLINE=1)."""
from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from helpers import ROOT, put_in_cache, tiny_train_args, write_malicious
from models.hub import resolve_weights


def _train(args: list[str], cwd) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "main.py"), *args], cwd=cwd, env=dict(os.environ),
                          capture_output=True, text=True, timeout=300)


def _errors(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if " ERROR " in line]


@pytest.mark.parametrize("arch", ["resnet18", "efficientnet-b0", "resnest50", "timm/test_resnet"])
def test_malicious_cache_file_is_refused_and_never_runs(arch, tiny_data, tmp_path, caches):
    marker = tmp_path / "PWNED"
    if arch.startswith("timm/"):  # timm reads the HF snapshot's model.safetensors: a pickle disguised as one
        put_in_cache(arch, caches)
    path = write_malicious(resolve_weights(arch, "imagenet").cache_path, marker)
    r = _train(tiny_train_args(tiny_data["folder"], tmp_path / "out", "--arch", arch, "--pretrained", "imagenet"),
               tmp_path)
    assert not marker.exists(), "the cached file's payload ran"
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr[-3000:]
    errors = _errors(r.stderr)
    assert len(errors) == 1, r.stderr[-3000:]
    assert re.search(rf"CheckpointError: --pretrained: the cached .* weights cannot be used: .*"
                     rf"\. Delete {re.escape(str(path))} .*or pass a local file with --pretrained PATH$", errors[0])


def test_pickled_pytorch_model_bin_in_the_hf_snapshot_is_never_read(tiny_data, tmp_path, caches):
    """timm's hub loader falls back to pytorch_model.bin when a repo has no model.safetensors; ours reads
    model.safetensors only: a snapshot holding only a pickle is 'not cached', and the pickle is never opened."""
    marker = tmp_path / "PWNED"
    put_in_cache("timm/test_resnet", caches)
    cached = resolve_weights("timm/test_resnet", "imagenet").cache_path
    cached.unlink()
    write_malicious(cached.with_name("pytorch_model.bin"), marker)
    r = _train(tiny_train_args(tiny_data["folder"], tmp_path / "out", "--arch", "timm/test_resnet",
                               "--pretrained", "imagenet"), tmp_path)
    assert not marker.exists(), "the snapshot's pytorch_model.bin was unpickled"
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr[-3000:]
    assert re.search(r"WeightsUnavailable: .* are not cached and HF_HUB_OFFLINE=1 forbids downloads; download "
                     rf".* and put it at {re.escape(str(cached))}", _errors(r.stderr)[0])
