"""Named weights in the libraries' caches are read by our safe reader, never by the libraries' loaders
(torch.hub's unpickles with ``weights_only=False``): on a benign file the result equals the library's own
pretrained build; a file that holds code, or cannot be read, or does not fit, is one CheckpointError naming
the cache file, and a payload never runs. No network: files are written into a temporary cache."""
from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from helpers import put_in_cache, write_malicious
from models.hub import pretrained_state, resolve_weights
from utils.checkpoint import CheckpointError

# one model per family, and the torchvision builders whose pretrained path does more than a strict load:
# densenet renames old key names, googlenet drops the auxiliary heads its file holds, mnasnet reads the
# module versions in the file's _metadata
ARCHS = ["resnet18", "densenet121", "googlenet", "mnasnet0_5", "timm/test_resnet", "efficientnet-b0", "resnest50"]


def _library_architecture(arch: str) -> nn.Module:
    """A randomly initialised model of the architecture the library's pretrained file holds."""
    torch.manual_seed(0)
    if arch == "googlenet":
        import torchvision
        return torchvision.models.googlenet(weights=None, aux_logits=True, init_weights=False)
    from models.registry import build_model
    return build_model(arch, 1000)


def write_benign(arch: str, home: Path) -> Path:
    """A benign weights file of ``arch`` where the library looks for it under ``home`` (the caches fixture),
    laid out as the real file is (densenet's old key names); returns its path."""
    if arch.startswith("timm/"):
        put_in_cache(arch, home)  # the HF snapshot layout (refs/main, snapshots/<rev>/model.safetensors)
        return resolve_weights(arch, "imagenet").cache_path
    state = _library_architecture(arch).state_dict()
    if arch.startswith("densenet"):  # torchvision's file (2017): no num_batches_tracked, no module versions,
        # and the old names ('denselayer1.norm.1.weight' for 'denselayer1.norm1.weight')
        state = {re.sub(r"(denselayer\d+\.(?:norm|relu|conv))([12])\.", r"\1.\2.", k): v
                 for k, v in state.items() if not k.endswith("num_batches_tracked")}
        assert any(".norm.1." in k for k in state)
    path = resolve_weights(arch, "imagenet").cache_path
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return path


def library_pretrained(arch: str, path: Path) -> nn.Module:
    """The library's own pretrained build, reading ``path`` with its own loader (a benign file only)."""
    if arch.startswith("timm/"):
        import timm
        return timm.create_model(resolve_weights(arch, "imagenet").name[len("timm/"):], pretrained=True,
                                 pretrained_cfg_overlay={"file": str(path), "source": ""})
    if arch.startswith("efficientnet-"):
        from efficientnet_pytorch import EfficientNet
        return EfficientNet.from_pretrained(arch)
    if arch.startswith("resnest"):
        import resnest.torch
        return getattr(resnest.torch, arch)(pretrained=True)
    import torchvision
    model = torchvision.models.get_model(arch, weights=torchvision.models.get_model_weights(arch).DEFAULT)
    if arch == "googlenet":  # given weights, torchvision builds it with its auxiliary heads and then drops them
        assert model.aux1 is None and not model.aux_logits
    return model


@pytest.mark.parametrize("arch", ARCHS)
def test_benign_cache_file_gives_the_libraries_own_pretrained_state(arch, caches):
    path = write_benign(arch, caches)
    ours = pretrained_state(resolve_weights(arch, "imagenet"))
    theirs = library_pretrained(arch, path).state_dict()
    assert list(ours) == list(theirs)
    for k, v in theirs.items():
        assert torch.equal(ours[k], v), k  # the same tensors read from the same file
    assert getattr(ours, "_metadata", None) == getattr(theirs, "_metadata", None)


@pytest.mark.parametrize("arch", ["resnet18", "efficientnet-b0", "resnest50", "timm/test_resnet"])
def test_malicious_cache_file_is_refused_and_its_payload_never_runs(arch, caches, tmp_path):
    marker = tmp_path / "PWNED"
    if arch.startswith("timm/"):  # a pickle disguised as the snapshot's model.safetensors
        put_in_cache(arch, caches)
    path = write_malicious(resolve_weights(arch, "imagenet").cache_path, marker)
    with pytest.raises(CheckpointError) as refused:
        pretrained_state(resolve_weights(arch, "imagenet"))
    assert not marker.exists(), "the cached file's payload ran"
    message = str(refused.value)
    assert "\n" not in message and str(path) in message
    assert f"Delete {path}" in message and "--pretrained PATH" in message
    assert ("posix.system" in message) if not arch.startswith("timm/") else ("not a valid safetensors" in message)


def _truncated(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])


def _wrong_shape(path: Path) -> None:
    state = torch.load(path, weights_only=True)
    state["conv1.weight"] = torch.zeros(8, 3, 3, 3)
    torch.save(state, path)


BAD = {
    "empty": (lambda p: p.write_bytes(b""), r"is empty"),
    "truncated": (_truncated, r"corrupt or truncated"),
    "random": (lambda p: p.write_bytes(os.urandom(4096)), r"is not a PyTorch checkpoint"),
    "wrong-shape": (_wrong_shape, r"does not fit the library's ResNet \(RuntimeError: .*size mismatch for "
                                  r"conv1\.weight"),
}


@pytest.mark.parametrize("kind", BAD)
def test_unreadable_cache_file_is_one_error_naming_it(kind, caches):
    path = write_benign("resnet18", caches)
    spoil, reason = BAD[kind]
    spoil(path)
    with pytest.raises(CheckpointError, match=rf"the cached ResNet18_Weights\.IMAGENET1K_V1 weights cannot be used: "
                                              rf".*{reason}.*\. Delete {re.escape(str(path))} .*--pretrained PATH$"):
        pretrained_state(resolve_weights("resnet18", "imagenet"))


@pytest.mark.parametrize("kind", ["empty", "truncated", "random", "wrong-shape"])
def test_unreadable_safetensors_in_the_hf_cache_is_one_error_naming_it(kind, caches):
    from safetensors.torch import save_file
    path = write_benign("timm/test_resnet", caches)
    if kind == "wrong-shape":
        save_file({"conv1.weight": torch.zeros(2, 3, 3, 3)}, str(path))
        reason = r"does not fit the library's timm test_resnet\.r160_in1k \(RuntimeError: .*conv1\.weight"
    else:
        {"empty": BAD["empty"][0], "truncated": _truncated, "random": BAD["random"][0]}[kind](path)
        reason = "is empty" if kind == "empty" else "is not a valid safetensors file"
    expected = rf"cannot be used: .*{reason}.*\. Delete {re.escape(str(path))} .*--pretrained PATH$"
    with pytest.raises(CheckpointError, match=expected):
        pretrained_state(resolve_weights("timm/test_resnet", "imagenet"))


def test_corrupt_blob_behind_an_hf_snapshot_link_is_named_too(caches):
    """huggingface_hub keeps the file in blobs/ and links the snapshot to it; deleting the link alone would
    let it link the same corrupt blob again, so the message names both."""
    path = write_benign("timm/test_resnet", caches)
    blob = path.parent.parent.parent / "blobs" / "0123456789abcdef"
    blob.parent.mkdir()
    blob.write_bytes(path.read_bytes()[:-100])
    path.unlink()
    path.symlink_to(os.path.relpath(blob, path.parent))
    expected = rf"Delete {re.escape(str(path))} and {re.escape(str(blob))}, the file it links to \("
    with pytest.raises(CheckpointError, match=expected):
        pretrained_state(resolve_weights("timm/test_resnet", "imagenet"))


def test_local_safetensors_file_loads_with_pretrained_path(tmp_path):
    from safetensors.torch import save_file

    from models import create_model
    state = _library_architecture("resnet18").state_dict()
    save_file(state, str(tmp_path / "w.safetensors"))
    model = create_model("resnet18", 3, pretrained=tmp_path / "w.safetensors")
    for k, v in model.state_dict().items():
        if not k.startswith("fc."):
            assert torch.equal(v, state[k]), k
