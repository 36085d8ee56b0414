"""models/spec.py: a model's identity, written into checkpoints and exports and read back once by inference."""
from __future__ import annotations

import contextlib
import dataclasses
import io
import json

import pytest
import torch

import config
from applications.setup.common import restore_for_inference
from export.core import export_metadata
from helpers import calibrated_checkpoint, run_main, tiny_train_args
from models.spec import ModelSpec
from utils.checkpoint import load_checkpoint, save_checkpoint


def inference_cfg(ckpt, data, *extra: str):
    return config.parse_config(["--evaluation", "--resume", str(ckpt), "--data", str(data), "--device", "cpu",
                                *extra])


def test_spec_is_frozen_hashable_and_round_trips():
    spec = ModelSpec("resnet18", ["0", "1"], [16, 16], mean=[0.5, 0.5, 0.5], std=[0.25, 0.25, 0.25], head="bce")
    assert spec.class_names == ("0", "1") and spec.image_size == (16, 16) and spec.num_classes == 2
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.head = "softmax"
    assert ModelSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec and hash(spec) == hash(spec)
    old = {"arch": "resnet18", "image_size": [16, 16], "mean": [0.5] * 3, "std": [0.25] * 3, "criterion": None,
           "eval_resize": None, "crop_pct": None}  # a config from before these flags had values
    assert ModelSpec.from_config(old, ["0"]) == ModelSpec("resnet18", ["0"], (16, 16), (0.5,) * 3, (0.25,) * 3,
                                                          eval_resize="letterbox", crop_pct=0.875, head="softmax")


def test_export_metadata_is_the_spec_under_the_demos_keys():
    spec = ModelSpec("resnet18", ["cat", "dog"], (24, 32), (0.4, 0.5, 0.6), (0.2, 0.3, 0.4), "center_crop", 0.9, "bce")
    meta = export_metadata(spec)
    assert {k: meta[k] for k in ("class_names", "image_size", "resize", "crop_pct", "mean", "std", "head")} == {
        "class_names": ["cat", "dog"], "image_size": [24, 32], "resize": "center_crop", "crop_pct": 0.9,
        "mean": [0.4, 0.5, 0.6], "std": [0.2, 0.3, 0.4], "head": "bce"}
    json.dumps(meta)  # ONNX metadata_props and the TorchScript extra file hold it as JSON


def test_a_checkpoint_without_a_spec_gets_one_from_its_stored_config(tiny_data, tmp_path):
    data = tiny_data["folder"]
    ckpt = calibrated_checkpoint(tmp_path / "run", "resnet18", data, 16, criterion="bce", eval_resize="center_crop")
    assert "model_spec" not in load_checkpoint(ckpt)
    restored = restore_for_inference(inference_cfg(ckpt, data, "--criterion", "softmax", "--image_size", "32", "32"))
    assert restored.spec == ModelSpec("resnet18", ["0", "1", "7"], (16, 16), mean=(0.485, 0.456, 0.406),
                                      std=(0.229, 0.224, 0.225), eval_resize="center_crop", head="bce")


def test_inference_takes_the_checkpoints_spec_over_its_config_and_the_command_line(tiny_data, tmp_path):
    data = tiny_data["folder"]
    ckpt = calibrated_checkpoint(tmp_path / "run", "resnet18", data, 16)  # config: softmax, letterbox, 16 x 16
    state = load_checkpoint(ckpt)
    spec = ModelSpec("resnet18", ["0", "1", "7"], (24, 24), (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), "center_crop",
                     0.75, "bce")
    save_checkpoint({**state, "model_spec": spec.to_dict()}, ckpt)
    assert restore_for_inference(inference_cfg(ckpt, data, "--image_size", "32", "32")).spec == spec


def test_predict_reads_the_checkpoint_once(tiny_data, tmp_path, monkeypatch):
    data = tiny_data["folder"]
    ckpt = calibrated_checkpoint(tmp_path / "run", "resnet18", data, 16)
    reads = []
    real_load = torch.load

    def counting_load(f, *args, **kwargs):
        reads.append(str(f))
        return real_load(f, *args, **kwargs)

    monkeypatch.setattr(torch, "load", counting_load)
    with contextlib.redirect_stdout(io.StringIO()):
        assert run_main(["--predict", str(data / "test"), "--resume", str(ckpt), "--data", str(data), "-j", "0",
                         "--no_progress"]) == 0
    assert reads.count(str(ckpt)) == 1, reads


@pytest.mark.slow
def test_training_writes_the_spec_that_evaluation_and_export_use(tiny_data, tmp_path, capsys):
    data = tiny_data["folder"]
    args = tiny_train_args(data, tmp_path / "out", "--epochs", "1", "--criterion", "bce", "--eval_resize",
                           "center_crop", "--crop_pct", "0.8")
    assert run_main(args) == 0
    best = tmp_path / "out" / "resnet18" / "default" / "checkpoints" / "best.pth"
    spec = ModelSpec.from_dict(load_checkpoint(best)["model_spec"])
    assert spec == ModelSpec("resnet18", ["0", "1", "7"], (16, 16), mean=(0.485, 0.456, 0.406),
                             std=(0.229, 0.224, 0.225), eval_resize="center_crop", crop_pct=0.8, head="bce")
    capsys.readouterr()
    assert run_main(["--jit", "--resume", str(best), "--data", str(data), "-j", "0"]) == 0
    extra = {"metadata.json": ""}
    torch.jit.load(json.loads(capsys.readouterr().out)["path"], _extra_files=extra)
    meta = json.loads(extra["metadata.json"])
    assert (meta["head"], meta["resize"], meta["crop_pct"], meta["class_names"]) == ("bce", "center_crop", 0.8,
                                                                                     ["0", "1", "7"])
