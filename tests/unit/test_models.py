"""models/: the registry, every family, unknown names, local pretrained weights."""
from __future__ import annotations

import pytest
import torch

import models
from helpers import ROUND_TRIP, real_images, train_one_step_and_save
from utils.checkpoint import CheckpointError

PROMISED_NAMES = ["resnet18", "resnet50", "resnext50_32x4d", "resnext101_32x8d", "resnext101_64x4d", "wide_resnet50_2",
                  "densenet121", "mobilenet_v2", "mobilenet_v3_small", "mobilenet_v3_large", "shufflenet_v2_x1_0",
                  "mnasnet1_0", "efficientnet_b0", "regnet_y_400mf", "convnext_tiny"] + \
                 [f"efficientnet-b{i}" for i in range(8)] + ["resnest50", "resnest101", "resnest200", "resnest269"]


def test_every_model_name_the_docs_promise_is_registered():
    names = set(models.list_models())
    assert set(PROMISED_NAMES) <= names


@pytest.mark.parametrize("name, family", [
    ("resnet18", "torchvision"), ("mobilenet_v3_small", "torchvision"), ("shufflenet_v2_x0_5", "torchvision"),
    ("efficientnet-b0", "efficientnet-pytorch"), ("resnest50", "resnest"), ("timm/resnet18", "timm"),
    ("timm/mobilenetv3_small_050", "timm"),
])
def test_each_family_builds_with_the_requested_head(name, family):
    torch.manual_seed(0)
    model = models.create_model(name, num_classes=7).eval()
    assert models.model_family(name) == family
    with torch.no_grad():
        out = model(torch.randn(2, 3, 64, 64))
    assert out.shape == (2, 7)
    assert len(models.classifier_keys(model, 7)) == 2  # a weight and a bias of 7 rows


@pytest.mark.parametrize("name, hint", [("resnet181", "Did you mean: resnet18"),
                                        ("efficientnet-b9", "efficientnet-b"),
                                        ("timm/resnet181", "Close matches: timm/resnet18")])
def test_unknown_names_suggest_close_matches(name, hint):
    with pytest.raises(ValueError, match="unknown") as e:
        models.create_model(name, 3)
    assert hint in str(e.value)


def test_pretrained_with_other_class_count_skips_only_the_head(tmp_path):
    torch.manual_seed(1)
    source = models.create_model("resnet18", 5)
    path = tmp_path / "tv.pth"
    torch.save(source.state_dict(), path)
    torch.manual_seed(2)
    fresh_head = models.create_model("resnet18", 3).fc.weight.detach().clone()
    torch.manual_seed(2)
    model = models.create_model("resnet18", 3)
    assert models.load_pretrained(model, path, 3) == ["fc.weight", "fc.bias"]
    for k, v in model.state_dict().items():
        if k.startswith("fc."):
            continue
        assert torch.equal(v, source.state_dict()[k]), k
    assert torch.equal(model.fc.weight, fresh_head)  # the new head keeps its own initialisation


@pytest.mark.parametrize("wrap", ["plain", "our_checkpoint", "state_dict", "ddp_prefix"])
def test_pretrained_file_formats(tmp_path, wrap):
    source = models.create_model("resnet18", 4)
    sd = source.state_dict()
    obj = {"plain": sd, "our_checkpoint": {"model": sd, "epoch": 3}, "state_dict": {"state_dict": sd},
           "ddp_prefix": {f"module.{k}": v for k, v in sd.items()}}[wrap]
    torch.save(obj, tmp_path / "w.pth")
    model = models.create_model("resnet18", 4, pretrained=tmp_path / "w.pth")
    assert all(torch.equal(v, sd[k]) for k, v in model.state_dict().items())


def test_pretrained_of_another_architecture_lists_keys(tmp_path):
    torch.save(models.create_model("resnet34", 4).state_dict(), tmp_path / "r34.pth")
    with pytest.raises(CheckpointError, match=r"does not fit this model .*unexpected keys: layer1\.2\.bn1"):
        models.create_model("resnet18", 4, pretrained=tmp_path / "r34.pth")
    torch.save(models.create_model("mobilenet_v3_small", 4).state_dict(), tmp_path / "mb.pth")
    with pytest.raises(CheckpointError, match="missing keys: bn1.bias"):
        models.create_model("resnet18", 4, pretrained=tmp_path / "mb.pth")


def test_pretrained_needing_code_to_unpickle_is_refused(tmp_path):
    import argparse  # old training scripts often pickled their argparse.Namespace into checkpoints
    torch.save({"model": models.create_model("resnet18", 2).state_dict(), "args": argparse.Namespace(lr=0.1)},
               tmp_path / "unsafe.pth")
    with pytest.raises(CheckpointError, match="cannot be loaded safely"):
        models.create_model("resnet18", 2, pretrained=tmp_path / "unsafe.pth")


def _torchvision_family(name: str) -> str:
    import torchvision
    return torchvision.models.get_model_builder(name).__module__


def test_round_trip_list_covers_every_registered_family():
    families = {models.model_family(n) if models.model_family(n) != "torchvision" else _torchvision_family(n)
                for n in models.list_models()}
    covered = {models.model_family(n) if models.model_family(n) != "torchvision" else _torchvision_family(n)
               for n in ROUND_TRIP}
    assert families == covered, families - covered


def test_mnasnet_loads_from_our_checkpoint_a_ddp_state_dict_and_a_bare_dict(tiny_data, tmp_path):
    """MNASNet reads its format version from the state dict's _metadata: it must survive extraction
    (also under DDP's ``module.`` prefix), and a hand-built dict without it still loads."""
    from models.pretrained import extract_state_dict
    images = real_images(tiny_data["folder"] / "train", 32, 2)
    before = train_one_step_and_save("mnasnet0_5", images, tmp_path / "ckpt.pth")
    state = torch.load(tmp_path / "ckpt.pth", weights_only=True)["model"]
    wrapped = torch.nn.Module()
    wrapped.module = models.create_model("mnasnet0_5", num_classes=3)
    wrapped.module.load_state_dict(state)
    torch.save(wrapped.state_dict(), tmp_path / "ddp.pth")
    assert extract_state_dict(torch.load(tmp_path / "ddp.pth", weights_only=True))._metadata[""] == {"version": 2}
    torch.save(dict(state), tmp_path / "bare.pth")
    for file in ("ckpt.pth", "ddp.pth", "bare.pth"):
        loaded = models.create_model("mnasnet0_5", num_classes=3, pretrained=tmp_path / file).eval()
        with torch.no_grad():
            assert torch.equal(loaded(images), before), file
