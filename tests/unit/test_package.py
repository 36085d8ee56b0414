"""models/package.py (config.json in timm's form, read back), safetensors weights (utils.checkpoint, --pretrained
FILE.safetensors), utils.atomic.replace_folder and the package references of --pretrained."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from models import create_model
from models.package import package_config, package_preprocessing, package_spec
from models.spec import ModelSpec
from utils.atomic import replace_folder
from utils.checkpoint import CheckpointError, load_checkpoint, load_safetensors, safetensors_checkpoint
from utils.weights_name import is_package_ref, is_weights_name

SPEC = ModelSpec(arch="timm/resnet18", class_names=("cat", "dog"), image_size=(40, 48), mean=(0.5, 0.4, 0.3),
                 std=(0.2, 0.25, 0.3), eval_resize="center_crop", crop_pct=0.9, interpolation="bicubic",
                 test_image_size=(56, 64), test_crop_pct=1.0)


def test_config_json_holds_only_timm_fields_and_reads_back_as_the_spec():
    from timm.models import PretrainedCfg
    config = package_config(SPEC, "resnet18")
    pre = config["pretrained_cfg"]
    PretrainedCfg(**pre)  # timm's local-dir: loader builds exactly this: an unknown key would be a TypeError
    assert config["architecture"] == "resnet18" and config["num_classes"] == 2
    assert config["label_names"] == ["cat", "dog"]
    assert pre["input_size"] == [3, 40, 48] and pre["test_input_size"] == [3, 56, 64] and pre["test_crop_pct"] == 1.0
    assert pre["crop_mode"] == "center" and pre["crop_pct"] == 0.9 and pre["interpolation"] == "bicubic"
    assert pre["first_conv"] == "conv1" and pre["classifier"] == "fc"  # timm's own layout keys for resnet18
    assert package_spec(config, "x") == SPEC
    without_ours = {k: v for k, v in config.items() if k != "model_spec"}  # as timm writes it: built from its fields
    assert package_spec(without_ours, "x") == SPEC
    assert package_preprocessing(SPEC) == {"mean": [0.5, 0.4, 0.3], "std": [0.2, 0.25, 0.3], "interpolation": "bicubic",
                                           "eval_resize": "center_crop", "crop_pct": 0.9, "image_size": [40, 48],
                                           "test_image_size": [56, 64], "test_crop_pct": 1.0}


def test_a_letterbox_model_is_timms_border_mode_and_a_model_timm_lacks_is_named_so_timm_refuses_it():
    spec = dataclasses.replace(SPEC, arch="mobilenet_v3_small", eval_resize="letterbox", test_image_size=None,
                               test_crop_pct=None)
    config = package_config(spec, None, note="not loadable by timm: why")
    assert config["architecture"] == "torchvision/mobilenet_v3_small" and config["timm_loadable"] is False
    assert config["pretrained_cfg"]["crop_mode"] == "border" and config["pretrained_cfg"]["crop_pct"] == 1.0
    assert "first_conv" not in config["pretrained_cfg"] and config["note"] == "not loadable by timm: why"
    assert package_spec(config, "x") == spec


def test_safetensors_checkpoint_round_trip_and_a_bad_file(tmp_path):
    state = {"a.weight": torch.randn(3, 2), "a.bias": torch.arange(3.0)}
    state["tied"] = state["a.weight"]  # shared memory, which safetensors refuses, is cloned apart
    path = tmp_path / "w.safetensors"
    path.write_bytes(safetensors_checkpoint(state, {"class_names": ["x", "y"], "optimizer": {"no": 1}}))
    tensors, metadata = load_safetensors(path)
    assert all(torch.equal(tensors[k], v) for k, v in state.items()) and tensors.keys() == state.keys()
    assert metadata == {"format": "pt", "class_names": '["x", "y"]'}  # only the published keys, JSON-encoded
    ckpt = load_checkpoint(path)
    assert ckpt["class_names"] == ["x", "y"] and set(ckpt) == {"model", "class_names"}
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!")
    with pytest.raises(CheckpointError, match="bad.safetensors is not a valid safetensors file"):
        load_checkpoint(bad)


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_pretrained_weights_file_of_either_format_loads(tmp_path, suffix):
    torch.manual_seed(0)
    source = create_model("resnet18", 3).state_dict()
    path = tmp_path / f"w{suffix}"
    if suffix == ".safetensors":
        path.write_bytes(safetensors_checkpoint(source, {}))
    else:
        torch.save(source, path)  # the pickle path (weights_only=True) stays as it was
    model = create_model("resnet18", 3, pretrained=path)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in source.items())


def test_replace_folder_swaps_a_whole_folder(tmp_path):
    (tmp_path / "new").mkdir()
    (tmp_path / "new" / "a").write_text("new")
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "old").write_text("old")
    replace_folder(tmp_path / "new", tmp_path / "pkg")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pkg"]
    assert [p.name for p in (tmp_path / "pkg").iterdir()] == ["a"]


def test_package_references_are_weights_names_not_files():
    for ref in ("hf-hub:me/tiny", "local-dir:/some/folder", "local-dir:rel/dir.pth"):
        assert is_package_ref(ref) and is_weights_name(ref)
    for spec in ("imagenet", "w.safetensors", "a/b.pth", None):
        assert not is_package_ref(spec)


@pytest.mark.parametrize("repo", ["a/b/c", "me/", "has space/x"])
def test_push_to_hub_takes_a_repo_id(repo, capsys):
    from config import parse_config
    with pytest.raises(SystemExit) as stop:
        parse_config(["--package", "x.pth", "out", "--push_to_hub", repo])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert f"--push_to_hub {repo!r} is not a Hub repo id: give OWNER/NAME" in err and len(err.splitlines()) == 1


def test_local_dir_package_fine_tunes_keeping_the_head_only_when_it_fits(tmp_path):
    from export.package import write_package
    torch.manual_seed(0)
    source = create_model("resnet18", 2).eval()
    spec = dataclasses.replace(SPEC, arch="resnet18", image_size=(32, 32), test_image_size=None, test_crop_pct=None)
    config = write_package(source, spec, tmp_path / "pkg", "card {timm_note}")
    assert config["timm_loadable"] and "timm.create_model(" in (tmp_path / "pkg" / "README.md").read_text()
    ref = f"local-dir:{tmp_path / 'pkg'}"
    same = create_model("resnet18", 2, pretrained=ref)  # as many classes: every tensor, the head too
    assert all(torch.equal(same.state_dict()[k], v) for k, v in source.state_dict().items())
    torch.manual_seed(1)
    other = create_model("resnet18", 5, pretrained=ref)  # another class count: a new head, the rest loaded
    assert all(torch.equal(other.state_dict()[k], v) for k, v in source.state_dict().items() if not k.startswith("fc."))
    assert other.fc.weight.shape == (5, 512)
    with pytest.raises(ValueError, match=r"holds a resnet18 \(its config.json\), not --arch resnet34: train it with "
                                         r"--arch resnet18"):
        create_model("resnet34", 2, pretrained=ref)
