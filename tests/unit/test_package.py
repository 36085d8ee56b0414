"""models/package.py (config.json in timm's form, read back), safetensors weights (utils.checkpoint, --pretrained
FILE.safetensors), utils.atomic.replace_folder and the package references of --pretrained."""
from __future__ import annotations

import dataclasses
import json

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


# ------------------------------------------------------------------ timm's evaluation transform vs ours
def _timm_and_our_inputs(spec: ModelSpec, image) -> tuple[torch.Tensor, torch.Tensor]:
    """A PIL image through timm's own transform of the package's pretrained_cfg (back to 0-255 levels) and
    through our evaluation transform."""
    from timm.data import create_transform as timm_transform
    from timm.data import resolve_data_config
    from torchvision.transforms.v2.functional import pil_to_tensor

    from dataloader.transforms import create_transform
    cfg = package_config(spec, "resnet18")["pretrained_cfg"]
    theirs = timm_transform(**resolve_data_config(pretrained_cfg=cfg))(image)
    mean, std = torch.tensor(spec.mean)[:, None, None], torch.tensor(spec.std)[:, None, None]
    theirs = ((theirs * std + mean) * 255).round()
    ours = create_transform(False, spec.image_size, eval_resize=spec.eval_resize, crop_pct=spec.crop_pct,
                            interpolation=spec.interpolation)(pil_to_tensor(image))
    return theirs, ours.float()


@pytest.mark.parametrize("eval_resize,size,interpolation", [
    ("center_crop", (32, 32), "bilinear"), ("center_crop", (32, 32), "bicubic"), ("center_crop", (32, 48), "bilinear"),
    ("letterbox", (32, 32), "bilinear"), ("letterbox", (32, 48), "bicubic")])
def test_the_package_says_whether_timms_transform_gives_our_input(eval_resize, size, interpolation):
    import numpy as np
    from PIL import Image

    from export.package import RunFacts, model_card, package_note, preprocessing_difference
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (50, 70, 3), dtype=np.uint8))  # not square
    spec = dataclasses.replace(SPEC, arch="resnet18", image_size=size, eval_resize=eval_resize, crop_pct=0.875,
                               interpolation=interpolation, test_image_size=None, test_crop_pct=None)
    theirs, ours = _timm_and_our_inputs(spec, image)
    assert theirs.shape == ours.shape == (3, *size)
    note, card = package_note(spec, ""), model_card(spec, "x.pth", RunFacts())
    if preprocessing_difference(spec):  # said to differ: it does, and the note and card say what to use instead
        assert (theirs - ours).abs().max() > 50
        assert "timm's evaluation transform from this pretrained_cfg differs" in note
        assert "**differs**" in card and ("pad centred" in note or "centre crop" in note)
    else:  # said to be the same: one level of 255 at most (PIL's resampling rounds otherwise than torchvision's)
        assert (theirs - ours).abs().max() <= 1 and note == "" and "the same input" in card
    expected_same = eval_resize == "center_crop" and size[0] == size[1]
    assert (preprocessing_difference(spec) == "") == expected_same


def test_the_card_states_the_resize_the_code_does():
    from export.package import RunFacts, model_card
    spec = dataclasses.replace(SPEC, image_size=(32, 32), crop_pct=0.875, test_image_size=None, test_crop_pct=None)
    card = model_card(spec, "x.pth", RunFacts())
    assert "resize the shorter side to 36 (floor(min(H, W) / crop_pct), crop_pct 0.875), centre crop 32 x 32" in card
    import math

    from dataloader.transforms import create_transform
    resize = create_transform(False, (32, 32), eval_resize="center_crop", crop_pct=0.875).transforms[0]
    assert resize.size == [36] and math.floor(32 / 0.875) == 36  # timm's transforms_imagenet_eval: math.floor


# ------------------------------------------------------------------ untrusted package files: one clear error
@pytest.mark.parametrize("config,message", [
    ({"model_spec": {"arch": "resnet18"}}, "its model_spec is not the one --package writes"),
    ({"architecture": "resnet18", "pretrained_cfg": {"input_size": 224}}, "its pretrained_cfg is not timm's form"),
    ({"architecture": "resnet18", "pretrained_cfg": {"input_size": [3, 32, 32], "mean": 0.5}},
     "its pretrained_cfg is not timm's form")])
def test_a_bad_config_json_is_a_checkpoint_error_naming_it(tmp_path, config, message):
    from models.package import load_package
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=rf"^{tmp_path}: config.json: {message} .*write the package again"):
        load_package(tmp_path)


def test_malformed_safetensors_metadata_names_the_file_and_key(tmp_path):
    from safetensors.torch import save_file
    path = tmp_path / "m.safetensors"
    save_file({"w": torch.zeros(2)}, str(path), metadata={"format": "pt", "config": "{not json"})
    with pytest.raises(CheckpointError, match=r"m.safetensors: its safetensors metadata 'config' is not valid JSON"):
        load_checkpoint(path)
    from utils.checkpoint import saved_config
    assert saved_config(path) is None  # the modes' look at its config: nothing, loading it says why
    save_file({"w": torch.zeros(2)}, str(path), metadata={"config": json.dumps({"data": "d", "multi_label": True})})
    assert saved_config(path) == {"data": "d", "multi_label": True}


# ------------------------------------------------------------------ --package DIR: which folders it replaces
def test_package_replaces_only_an_empty_folder_or_its_own_package(tmp_path):
    from export.package import check_target
    from models.package import package_config
    check_target(tmp_path / "absent")
    (tmp_path / "empty").mkdir()
    check_target(tmp_path / "empty")
    ours = tmp_path / "ours"
    ours.mkdir()
    (ours / "config.json").write_text(json.dumps(package_config(SPEC, "resnet18")))
    (ours / "README.md").write_text("card")
    check_target(ours)
    snapshot = tmp_path / "snapshot"  # a Hub snapshot of timm's: its config.json has no model_spec
    snapshot.mkdir()
    (snapshot / "config.json").write_text(json.dumps({"architecture": "resnet18", "pretrained_cfg": {}}))
    (snapshot / "model.safetensors").write_bytes(b"x")
    readme = tmp_path / "readme"
    readme.mkdir()
    (readme / "README.md").write_text("notes")
    for folder in (snapshot, readme):
        with pytest.raises(FileExistsError, match=rf"^--package: {folder} exists and is not a package --package "
                                                  r"wrote .*; choose another DIR or remove it$"):
            check_target(folder)


def test_a_bad_package_config_through_main_is_one_line(tiny_data, tmp_path, capsys):
    from helpers import run_main
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "config.json").write_text(json.dumps({"model_spec": {"arch": "resnet18"}}))
    (package / "model.safetensors").write_bytes(safetensors_checkpoint({"w": torch.zeros(1)}, {}))
    assert run_main(["--train", "--data", str(tiny_data["folder"]), "--arch", "resnet18", "--pretrained",
                     f"local-dir:{package}", "--epochs", "1", "--warmup", "0", "-j", "0",
                     "--output", str(tmp_path / "out"), "--no_progress"]) != 0
    err = capsys.readouterr().err.strip()
    assert "config.json: its model_spec is not the one --package writes" in err and "Traceback" not in err
    assert len(err.splitlines()) == 1
