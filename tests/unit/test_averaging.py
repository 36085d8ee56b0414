"""--average's arithmetic and its choice of files: the mean of known state dicts, integer buffers from the last,
checkpoints of another model refused, last:K / best:K read from kept.json."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import config
from engine.averaging import average_sources, average_state_dicts, averaged_checkpoint, check_same_model
from models import create_model
from utils.checkpoint import CheckpointError


def test_the_average_of_identical_state_dicts_equals_each_of_them():
    sd = create_model("simple_cnn", 3).state_dict()
    averaged = average_state_dicts([sd, sd, sd])
    assert averaged.keys() == sd.keys()
    for key, value in sd.items():
        torch.testing.assert_close(averaged[key], value, rtol=0, atol=1e-7)
        assert averaged[key].dtype == value.dtype


def test_the_average_of_two_known_state_dicts_is_their_arithmetic_mean_and_integers_come_from_the_last():
    a = {"w": torch.tensor([1.0, 2.0, -3.0]), "h": torch.tensor([0.5], dtype=torch.float16),
         "num_batches_tracked": torch.tensor(4)}
    b = {"w": torch.tensor([3.0, 6.0, 1.0]), "h": torch.tensor([1.5], dtype=torch.float16),
         "num_batches_tracked": torch.tensor(9)}
    averaged = average_state_dicts([a, b])
    torch.testing.assert_close(averaged["w"], torch.tensor([2.0, 4.0, -1.0]))
    torch.testing.assert_close(averaged["h"], torch.tensor([1.0], dtype=torch.float16))
    assert averaged["num_batches_tracked"].item() == 9


def test_checkpoints_of_another_architecture_or_other_classes_are_refused_in_one_line(tmp_path):
    sd = create_model("simple_cnn", 3).state_dict()
    ok = {"arch": "simple_cnn", "class_names": ["a", "b", "c"]}
    paths = [tmp_path / "a.pth", tmp_path / "b.pth"]
    check_same_model(paths, [ok, dict(ok)], [sd, sd])
    for other, word in (({**ok, "arch": "resnet18"}, "architecture"), ({**ok, "class_names": ["a", "b", "x"]},
                                                                        "classes")):
        with pytest.raises(CheckpointError, match=f"b.pth has {word}") as e:
            check_same_model(paths, [ok, other], [sd, sd])
        assert "\n" not in str(e.value)
    wider = create_model("simple_cnn", 4).state_dict()
    with pytest.raises(CheckpointError, match="other tensors"):
        check_same_model(paths, [ok, ok], [sd, wider])


def test_last_and_best_k_read_the_runs_kept_json(tmp_path):
    index = {"metric": "top1", "best": [{"epoch": 5, "file": "epoch_5.pth", "value": 90.0},
                                        {"epoch": 2, "file": "epoch_2.pth", "value": 80.0}],
             "last": [{"epoch": e, "file": f"epoch_{e}.pth"} for e in (3, 4, 5)]}
    (tmp_path / "kept.json").write_text(json.dumps(index))
    assert average_sources(["last:2"], tmp_path) == [tmp_path / "epoch_4.pth", tmp_path / "epoch_5.pth"]
    assert average_sources(["best:1", "x.pth"], tmp_path) == [tmp_path / "epoch_5.pth", Path("x.pth")]
    with pytest.raises(ValueError, match="keeps 3 last epoch"):
        average_sources(["last:4"], tmp_path)
    with pytest.raises(FileNotFoundError, match="--keep_last"):
        average_sources(["last:1"], tmp_path / "nothing")


def test_the_averaged_checkpoint_keeps_spec_classes_and_config_but_no_training_state():
    last = {"model": {}, "optimizer": {}, "arch": "simple_cnn", "class_names": ["a"], "model_spec": {"arch": "x"},
            "config": {"lr": 0.1}, "epoch": 3}
    ckpt = averaged_checkpoint({"w": torch.zeros(1)}, last, [Path("a.pth")])
    assert set(ckpt) == {"model", "averaged_from", "arch", "class_names", "model_spec", "config"}
    assert ckpt["averaged_from"] == ["a.pth"] and "averaged_from" not in averaged_checkpoint({}, last)


def test_average_needs_a_pth_out_and_k_of_at_least_one(capsys):
    for argv, message in ((["--average", "a.pth", "b.pth"], "--out FILE.pth"),
                          (["--average", "last:0", "--out", "x.pth"], "K must be >= 1")):
        with pytest.raises(SystemExit):
            config.parse_config(argv)
        assert message in capsys.readouterr().err
    assert config.parse_config(["--average", "last:3", "--out", "x.pth"]).average == ["last:3"]


def test_an_average_of_calibrated_checkpoints_is_uncalibrated():
    """A --calibrate temperature was fitted to its source's logits: the averaged checkpoint's spec has 1 again."""
    last = {"model": {}, "arch": "simple_cnn", "class_names": ["a"], "model_spec": {"arch": "x", "temperature": 0.4}}
    assert averaged_checkpoint({"w": torch.zeros(1)}, last)["model_spec"] == {"arch": "x", "temperature": 1.0}
    assert last["model_spec"]["temperature"] == 0.4  # the source is left as it is
