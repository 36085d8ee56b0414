"""Each mode's flags: --MODE --help shows what the mode reads, other modes' flags are refused, parsing reads
no file (main.py checks the mode's files after it), and resume-safe keys follow from the groups."""
from __future__ import annotations

import argparse
import re
import subprocess
import sys
import time

import pytest
import torch
import yaml

import config
import main
from helpers import ROOT


def mode_help(capsys, *argv: str) -> str:
    with pytest.raises(SystemExit) as exit_info:
        config.parse_config([*argv, "--help"])
    assert exit_info.value.code == 0
    return capsys.readouterr().out


def listed(text: str) -> set[str]:
    """The flags a --help text lists as entries (not those its other help texts mention)."""
    return set(re.findall(r"^  (?:-\w(?: [A-Z_]+)*, )?(--[\w-]+)", text, re.M))


def test_evaluation_help_shows_only_what_evaluation_reads():
    start = time.perf_counter()
    r = subprocess.run([sys.executable, "main.py", "--evaluation", "--help"], cwd=ROOT, capture_output=True,
                       text=True, timeout=60)
    seconds = time.perf_counter() - start
    assert r.returncode == 0, r.stderr
    shown = listed(r.stdout)
    assert {"--evaluation", "--eval_split", "--out", "--resume", "--data", "--arch", "--device", "--amp"} <= shown
    assert not {"--lr", "--epochs", "--optimizer", "--topk", "--opset", "--visual_method", "--train", "--sweep"} & shown
    assert seconds < 4, f"main.py --evaluation --help took {seconds:.1f} s"


def test_train_help_has_the_training_flags(capsys):
    shown = listed(mode_help(capsys, "--train"))
    assert {"--lr", "--epochs", "--optimizer", "--distill", "--curriculum_file", "--target_layer", "--data"} <= shown
    assert not {"--eval_split", "--topk", "--opset", "--curriculum_thresholds", "--sweep_devices"} & shown


def test_plain_help_lists_the_modes_and_the_shared_flags(capsys):
    text = mode_help(capsys)
    shown = listed(text)
    assert {f"--{mode}" for mode in config.MODES} | {"--data", "--resume", "--arch"} <= shown
    assert "--MODE --help" in text and not {"--lr", "--eval_split", "--topk"} & shown


@pytest.mark.parametrize("mode", list(config.MODE_REGISTRY))
def test_every_mode_help_shows_exactly_the_flags_it_reads(capsys, mode):
    argv = {"predict": ["--predict", "x"], "visual_source": ["--visual_source", "x"],
            "knowledge": ["--knowledge", "val"],
            "visual_data": ["--visual_data", "val"], "publish": ["--publish", "a", "b"], "compare": ["--compare", "r"],
            "package": ["--package", "a", "b"],
            "sweep": ["--sweep", "s.yaml"]}.get(mode, [f"--{mode}"])
    shown = listed(mode_help(capsys, *argv))
    reads = config.mode_reads(mode)
    expected = {[s for s in a.option_strings if s.startswith("--")][0] for a in config.build_parser()._actions
                if a.dest in reads and a.option_strings and a.help != argparse.SUPPRESS}
    assert shown == expected | {"--help"}


@pytest.mark.parametrize("argv, message", [
    (["--evaluation", "--resume", "c.pth", "--topk", "3"],
     "--topk is a --predict option that --evaluation does not read: drop it, or run --predict"),
    (["--train", "--opset", "17", "--visual_limit", "2"],
     "--opset is a --onnx option that --train does not read: drop it, or run --onnx; --visual_limit is a "
     "--visual_data option"),
    (["--predict", "x", "--resume", "c.pth", "--lr", "0.1", "--eval_split", "val"],
     "--predict ignores training options, but the command line gives --lr: drop it, or train with --train; "
     "--eval_split is a --evaluation option"),
    (["--compare", "runs", "--curriculum_thresholds", "0.5", "--curriculum_weights", "1"],
     "--curriculum_thresholds, --curriculum_weights are --make_curriculum options that --compare does not read"),
])
def test_flags_of_another_mode_are_refused_in_one_line(capsys, argv, message):
    with pytest.raises(SystemExit) as exit_info:
        config.parse_config(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err, err
    assert len([line for line in err.splitlines() if "error:" in line]) == 1


def test_what_a_mode_reads_is_accepted(tmp_path):
    assert config.parse_config(["--predict", "x", "--resume", "c.pth", "--topk", "3", "-v"]).topk == 3
    assert config.parse_config(["--onnx", "--resume", "c.pth", "--opset", "17", "--eval_split", "val"]).opset == 17
    assert config.parse_config(["--jit", "--resume", "c.pth", "--eval_split", "val"]).eval_split == "val"
    assert config.parse_config(["--train", "--target_layer", "layer3", "--curriculum_file", "c.txt"]).target_layer
    # a sweep passes the training flags on to every variant
    cfg = config.parse_config(["--sweep", "s.yaml", "--lr", "0.3", "--aug", "--sort_by", "test_top1", "--trials", "2"])
    assert cfg.lr == 0.3 and cfg.aug and cfg.trials == 2


def test_yaml_keys_of_other_modes_are_not_refused(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({"topk": 3, "opset": 17, "lr": 0.2, "visual_limit": 4}))
    cfg = config.parse_config(["--config", str(recipe), "--evaluation", "--resume", "c.pth"])
    assert cfg.topk == 3 and cfg.opset == 17 and cfg.lr == 0.2


@pytest.mark.parametrize("recipe", sorted((ROOT / "z_task_shell" / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_the_shipped_configs_still_parse(recipe):
    data = yaml.safe_load(recipe.read_text())
    if {"grid", "variants", "search"} & set(data):  # a sweep file
        assert config.parse_config(["--sweep", str(recipe)]).sweep == str(recipe)
    else:
        assert config.parse_config(["--train", "--config", str(recipe)]).train
        assert config.parse_config(["--evaluation", "--resume", "c.pth", "--config", str(recipe)]).evaluation


class FileEvents:
    """Files opened and folders listed while it is on (a Python audit hook: hooks cannot be removed)."""
    active: list[str] | None = None

    @classmethod
    def hook(cls, event: str, args: tuple) -> None:
        if cls.active is not None and event in ("open", "os.listdir", "os.scandir", "glob.glob"):
            cls.active.append(f"{event} {args[0]}")

    def __enter__(self) -> list[str]:
        if not getattr(FileEvents, "installed", False):
            sys.addaudithook(FileEvents.hook)
            FileEvents.installed = True
        FileEvents.active = []
        return FileEvents.active

    def __exit__(self, *exc) -> None:
        FileEvents.active = None


def test_parsing_reads_no_file_but_the_yaml(tmp_path):
    other = tmp_path / "trained_on"
    other.mkdir()
    ckpt = tmp_path / "best.pth"
    torch.save({"config": {"data": str(other), "dataset": "folder"}}, ckpt)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({"eval_split": "val"}))
    data = tmp_path / "no_teachers"
    data.mkdir()
    with FileEvents() as events:
        cfg, given = config.parse_command_line(["--evaluation", "--resume", str(ckpt), "--config", str(recipe)])
        config.parse_config(["--train", "--distill", "--data", str(data), "--cost_matrix", str(tmp_path / "none")])
        config.parse_config(["--evaluation", "--resume", str(tmp_path / "nonexistent" / "x.pth")])
    touched = [e for e in events if str(tmp_path) in e]
    assert touched == [f"open {recipe}"], touched
    assert cfg.data == str(config.DEFAULT_DATA)  # the checkpoint is not read while parsing ...
    config.check_files(cfg, given)
    assert cfg.data == str(other)  # ... but before the mode runs


def test_given_data_wins_over_the_checkpoint_data(tmp_path):
    other = tmp_path / "trained_on"
    other.mkdir()
    ckpt = tmp_path / "best.pth"
    torch.save({"config": {"data": str(other)}}, ckpt)
    cfg, given = config.parse_command_line(["--evaluation", "--resume", str(ckpt), "--data", str(tmp_path)])
    config.check_files(cfg, given)
    assert cfg.data == str(tmp_path)


def test_a_file_that_is_no_checkpoint_leaves_the_data_alone(tmp_path):
    from utils.checkpoint import saved_config
    other = tmp_path / "trained_on"
    other.mkdir()
    no_config, garbage = tmp_path / "weights.pth", tmp_path / "garbage.pth"
    torch.save({"model": {}}, no_config)
    garbage.write_bytes(b"not a checkpoint")
    assert saved_config(no_config) is None and saved_config(garbage) is None
    for ckpt in (no_config, garbage):
        cfg, given = config.parse_command_line(["--evaluation", "--resume", str(ckpt)])
        config.check_files(cfg, given)  # loading the checkpoint later says what is wrong with it
        assert cfg.data == str(config.DEFAULT_DATA)


@pytest.mark.parametrize("argv, message", [
    (["--evaluation", "--resume", "/nonexistent/x.pth"], "--resume: file '/nonexistent/x.pth' does not exist"),
    (["--predict", "/nonexistent/images", "--resume", "/nonexistent/x.pth"], "--resume: file '/nonexistent/x.pth'"),
    (["--publish", "/nonexistent/x.pth", "out"], "--publish: checkpoint '/nonexistent/x.pth' does not exist"),
    (["--package", "/nonexistent/x.pth", "out"], "--package: checkpoint '/nonexistent/x.pth' does not exist"),
    (["--sweep", "/nonexistent/s.yaml"], "--sweep: file '/nonexistent/s.yaml' does not exist"),
])
def test_the_mode_reports_missing_files(capsys, argv, message):
    config.parse_config(argv)  # the parser does not look
    assert main.main(argv) == 2
    err = capsys.readouterr().err
    assert f"main.py: error: {message}" in err and len(err.strip().splitlines()) == 1, err


def test_resume_safe_keys_come_from_the_groups():
    safe = config.RESUME_SAFE_KEYS
    assert safe == config.resume_safe_keys()
    assert set(config.MODEL_IDENTITY_KEYS) == {"arch", "num_classes", "image_size", "mean", "std", "eval_resize",
                                               "crop_pct", "criterion", "interpolation", "in_chans", "bit_depth",
                                               "multi_label"}
    assert not safe & set(config.MODEL_IDENTITY_KEYS)
    assert {"workers", "device", "epochs", "output", "tag", "resume", "channels_last", "compile", "tracker",
            "eval_split", "topk", "opset", "visual_method", "cache_dataset", "sort_by", *config.MODES} <= safe
    assert not {"data", "dataset", "batch_size", "seed", "amp", "lr", "optimizer", "aug", "mixup", "focal_loss",
                "distill", "pretrained", "freeze_backbone", "sync_bn", "curriculum_file"} & safe
    # every group is either resume-safe or identity: a key's group decides, never a hand list
    parser = config.build_parser()
    for group in parser._action_groups:
        dests = {a.dest for a in group._group_actions} - {"help"}
        assert dests <= safe or not dests & safe, (group.title, dests & safe)


def test_resume_conflicts_follow_the_groups():
    a = config.parse_config(["--train", "--lr", "0.1"])
    b = config.parse_config(["--train", "--lr", "0.1", "--arch", "resnet34", "-j", "0", "--epochs", "50",
                             "--device", "cpu", "--image_size", "32", "32"])
    assert config.config_conflicts(config.config_to_dict(a), b) == {"arch": ("resnet18", "resnet34"),
                                                                   "image_size": ([224, 224], [32, 32])}


def test_model_identity_keys_are_the_model_spec_and_the_class_count():
    from models.spec import CONFIG_KEYS  # the config keys a ModelSpec is built from
    assert set(config.MODEL_IDENTITY_KEYS) == set(CONFIG_KEYS.values()) | {"num_classes"}
    assert not set(config.MODEL_IDENTITY_KEYS) & set(config.RESUME_SAFE_KEYS)


def test_config_stays_torch_free():
    code = ("import sys, config; config.build_parser(); config.parse_config(['--train']); "
            "config.flag_reference(); assert 'torch' not in sys.modules, 'torch imported'")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr


def test_a_sweep_refuses_flags_its_training_runs_do_not_read(tmp_path):
    from applications.sweep import run_flags
    assert run_flags({"epochs": 2}, {"lr": 0.2, "aug": True}, tmp_path, "a")["lr"] == 0.2
    with pytest.raises(config.ConfigError, match=r"--sweep: variant b: --topk is a --predict option that --train "
                                                 r"does not read"):
        run_flags({"epochs": 2}, {"topk": 3}, tmp_path, "b")


def parse_error(capsys, *argv: str) -> str:
    """The stderr of a command line the parser refuses, after checking it exits 2."""
    with pytest.raises(SystemExit) as exit_info:
        config.parse_config(list(argv))
    assert exit_info.value.code == 2
    return capsys.readouterr().err


@pytest.mark.parametrize("argv, says", [
    (["--train", "--lrr", "0.1"], r"unrecognized arguments: --lrr 0\.1; --lrr: did you mean --lr\?"),
    (["--trian"], r"unrecognized arguments: --trian; --trian: did you mean --train\b"),
    (["--train", "--topk", "3"],
     r"--topk is a --predict option that --train does not read.*\(see main\.py --train --help\)"),
    (["--train", "--epochs", "1"], r"--warmup \(1\.0 epochs\) must be shorter than --epochs \(1\)"),
    (["--train", "--evaluation"], r"pick one mode, got --train, --evaluation"),
    # the flags a mode does not read are named before a value check of them (it used to be the warm-up rule)
    (["--knowledge", "train", "--resume", "x.pth", "--epochs", "1"], r"--knowledge ignores training options.*--epochs"),
    # int8 flags without --quantize int8 were ignored silently (exit 0)
    (["--openvino", "--resume", "x.pth", "--calib_method", "entropy"],
     r"--calib_method is an int8 option, read only with --quantize int8: add that, or drop it"),
    (["--onnx", "--resume", "x.pth", "--calib_images", "16", "--max_accuracy_drop", "2"],
     r"--calib_images, --max_accuracy_drop are int8 options, read only with --quantize int8"),
])
def test_parser_errors_are_one_line_with_a_hint(capsys, argv, says):
    """A flag error is one line (it came after 13-77 lines of usage), exit 2, a near miss suggested."""
    err = parse_error(capsys, *argv)
    assert len(err.strip().splitlines()) == 1, err
    assert err.startswith("main.py: error: ") and re.search(says, err), err


def test_help_states_each_default_once_and_no_machine_paths(capsys):
    text = mode_help(capsys, "--train") + mode_help(capsys, "--onnx")
    flat = " ".join(text.split())  # help texts wrap across lines
    for entry in re.split(r"\s(?=--?\w[\w-]* )", flat):
        assert entry.lower().count("(default:") <= 1, entry
    assert "(default: None)" not in flat
    assert str(ROOT) not in flat
    assert "(default: data/digits in the repository" in flat and "(default: 64)" in flat
