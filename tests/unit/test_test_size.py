"""``--use_test_size``: the test size and crop fraction of timm weights (timm's ``test_input_size`` /
``test_crop_pct``), recorded in the spec of a model fine-tuned from them and used to evaluate it.

``resnet10t.c3_in1k`` (timm's ``--pretrained imagenet`` for resnet10t) trains at 176x176 with crop_pct 0.875
and evaluates at 224x224 with crop_pct 0.95; ``test_resnet.r160_in1k`` defines no test size.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torchvision.transforms import v2

import config
from applications.setup.common import evaluation_spec, spec_transform, training_spec, weights_test_size
from dataloader import read_class_names
from helpers import put_in_cache, read_json, run_main
from models import create_model
from models.spec import ModelSpec
from utils.checkpoint import save_checkpoint

ARCH, WEIGHTS = "timm/resnet10t", "resnet10t.c3_in1k"


def _reference() -> tuple[list[int], list[int], float, float]:
    """timm's own config of the weights: train size, test size, crop_pct, test_crop_pct."""
    from timm.models import get_pretrained_cfg
    cfg = get_pretrained_cfg(WEIGHTS)
    return list(cfg.input_size[1:]), list(cfg.test_input_size[1:]), cfg.crop_pct, cfg.test_crop_pct


def _train_cfg(data: Path, arch: str, size: int, *extra: str):
    return config.build_parser().parse_args(["--train", "--arch", arch, "--data", str(data), "--pretrained", "imagenet",
                                             "--image_size", str(size), str(size), "--eval_resize", "center_crop",
                                             *extra])


def _checkpoint(path: Path, spec: ModelSpec) -> Path:
    """A checkpoint of ``spec``'s model (random weights, seed 0), as --train saves it: no training."""
    torch.manual_seed(0)
    model = create_model(spec.arch, spec.num_classes).eval()
    save_checkpoint({"model": model.state_dict(), "class_names": list(spec.class_names), "arch": spec.arch,
                     "model_spec": spec.to_dict()}, path)
    return path


@pytest.fixture(scope="module")
def tuned_spec(tiny_data) -> ModelSpec:
    """The spec of resnet10t fine-tuned from resnet10t.c3_in1k at its own size with its crop_pct."""
    train_size, _, crop_pct, _ = _reference()
    cfg = _train_cfg(tiny_data["folder"], ARCH, train_size[0], "--crop_pct", str(crop_pct))
    return training_spec(cfg, read_class_names(tiny_data["folder"], "folder"))


def test_the_spec_records_the_weights_test_size_and_keeps_it(tuned_spec, tiny_data):
    train_size, test_size, crop_pct, test_crop_pct = _reference()
    assert (train_size, test_size, crop_pct, test_crop_pct) == ([176, 176], [224, 224], 0.875, 0.95)  # timm's data
    assert tuned_spec.image_size == tuple(train_size) and tuned_spec.crop_pct == crop_pct
    assert tuned_spec.test_image_size == tuple(test_size) and tuned_spec.test_crop_pct == test_crop_pct
    assert ModelSpec.from_dict(tuned_spec.to_dict()) == tuned_spec  # through a checkpoint and back
    old = {k: v for k, v in tuned_spec.to_dict().items() if not k.startswith("test_")}  # a checkpoint before them
    assert ModelSpec.from_dict(old).test_image_size is None and not ModelSpec.from_dict(old).has_test_size
    # trained at another size than the weights': their test size does not go with it, and the note says why
    other = _train_cfg(tiny_data["folder"], ARCH, 160)
    recorded, line = weights_test_size(other)
    assert recorded == {} and training_spec(other, ["a"]).test_image_size is None
    assert "224x224" in line and "176x176" in line and "--image_size 160x160" in line
    # weights without a test size, a local file, no weights: nothing recorded
    assert weights_test_size(_train_cfg(tiny_data["folder"], "timm/test_resnet", 160))[0] == {}
    for pretrained in (None, "weights.pth"):
        other.pretrained = pretrained
        assert weights_test_size(other)[0] == {} and not training_spec(other, ["a"]).has_test_size


def test_use_test_size_builds_the_eval_transform_at_the_test_size(tuned_spec):
    image = torch.randint(0, 256, (3, 300, 400), dtype=torch.uint8)
    for use, size, crop in ((True, 224, 0.95), (False, 176, 0.875)):
        transform = spec_transform(evaluation_spec(tuned_spec, use, "best.pth"))
        resize = [m for m in transform.transforms if isinstance(m, v2.Resize)]
        assert [r.size for r in resize] == [[int(size / crop)]]  # the short side to size / crop_pct
        assert tuple(transform(image).shape) == (3, size, size)


def _evaluate(checkpoint: Path, data: Path, *extra: str) -> int:
    return run_main(["--evaluation", "--resume", str(checkpoint), "--data", str(data), "-j", "0", "-b", "12",
                     "--no_progress", "--device", "cpu", *extra])


def test_evaluation_reports_the_size_it_used(tuned_spec, tiny_data, tmp_path, caplog):
    checkpoint = _checkpoint(tmp_path / "run" / "checkpoints" / "best.pth", tuned_spec)
    run = tmp_path / "output" / ARCH.replace("/", "-") / "best"
    report = run / "eval_test" / "metrics.json"
    assert _evaluate(checkpoint, tiny_data["folder"], "--output", str(tmp_path / "output"), "--use_test_size") == 0
    assert not report.exists()  # the test-size report goes beside the plain one, not over it
    assert read_json(run / "eval_test_test_size" / "metrics.json")["input"] == {
        "image_size": [224, 224], "eval_resize": "center_crop", "crop_pct": 0.95, "interpolation": "bilinear",
        "test_size": True}
    assert "--use_test_size: evaluating at 224x224, crop_pct 0.95" in caplog.text
    assert "at 224x224 (--use_test_size)" in caplog.text
    assert _evaluate(checkpoint, tiny_data["folder"], "--output", str(tmp_path / "output")) == 0  # the train size
    assert read_json(report)["input"] == {"image_size": [176, 176], "eval_resize": "center_crop", "crop_pct": 0.875,
                                          "interpolation": "bilinear", "test_size": False}


def test_a_model_without_a_test_size_is_refused_in_one_line(tiny_data, tmp_path, capsys, caches):
    spec = training_spec(config.build_parser().parse_args(["--train", "--arch", "simple_cnn", "--image_size", "16",
                                                           "16"]), read_class_names(tiny_data["folder"], "folder"))
    checkpoint = _checkpoint(tmp_path / "scratch.pth", spec)
    capsys.readouterr()
    assert _evaluate(checkpoint, tiny_data["folder"], "--output", str(tmp_path / "out"), "--use_test_size") != 0
    err = capsys.readouterr().err
    assert f"--use_test_size: {checkpoint} records no test size" in err and "Traceback" not in err
    assert "drop --use_test_size to evaluate at its training size 16x16" in err
    assert not (tmp_path / "out" / "simple_cnn" / "scratch" / "eval_test").exists()
    # --train with weights that define none: refused before training starts, no run folder made
    put_in_cache("timm/test_resnet", caches)
    assert run_main(["--train", "--arch", "timm/test_resnet", "--pretrained", "imagenet", "--data",
                     str(tiny_data["folder"]), "--image_size", "160", "160", "--output", str(tmp_path / "out"),
                     "-j", "0", "--device", "cpu", "--use_test_size"]) != 0
    err = capsys.readouterr().err
    assert "--use_test_size: no test size: the timm/test_resnet.r160_in1k weights define none" in err
    assert "Traceback" not in err and not (tmp_path / "out" / "timm-test_resnet").exists()
