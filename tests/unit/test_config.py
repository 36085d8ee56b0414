"""config: flags, YAML defaults, validation messages, saved config."""
from __future__ import annotations

import pytest
import yaml

import config


def parse(argv, capsys=None):
    return config.parse_config(argv)


def test_defaults_and_aliases():
    cfg = config.parse_config(["--train"])
    assert cfg.train and not cfg.evaluation and cfg.dataset == "folder" and cfg.arch == "resnet18"
    assert config.parse_config(["--train", "--dataset", "imagenet"]).dataset == "folder"
    assert config.parse_config(["--train", "--dataset", "read_from_txt"]).dataset == "txt"
    assert config.parse_config(["--train", "--zip"]).dataset == "zip"
    assert config.parse_config(["--train", "-b", "7", "-j", "0"]).batch_size == 7
    assert config.parse_config(["--train", "-j", "auto"]).workers == config.available_cores() >= 1


def test_yaml_sets_defaults_and_flags_win(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text(yaml.safe_dump({"lr": 0.02, "epochs": 3, "image_size": [32, 48], "optimizer": "adamw",
                                 "dataset": "read_from_txt", "amp": True}))
    cfg = config.parse_config(["--train", "--config", str(f), "--epochs", "5"])
    assert cfg.lr == 0.02 and cfg.epochs == 5 and cfg.image_size == [32, 48]
    assert cfg.optimizer == "adamw" and cfg.dataset == "txt" and cfg.amp is True


@pytest.mark.parametrize("content, message", [
    ({"lrr": 0.1}, "unknown key 'lrr' (did you mean lr"),
    ({"optimizer": "sgdd"}, "key 'optimizer' (flag --optimizer) has invalid value 'sgdd': choose from sgd, adam"),
    ({"epochs": "many"}, "key 'epochs' (flag --epochs) has invalid value 'many'"),
    ({"image_size": [32]}, "expected 2 values, got 1"),
    ({"amp": "yes"}, "expected true or false"),
])
def test_yaml_errors_name_the_key(tmp_path, capsys, content, message):
    f = tmp_path / "c.yaml"
    f.write_text(yaml.safe_dump(content))
    with pytest.raises(SystemExit):
        config.parse_config(["--train", "--config", str(f)])
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("content, message", [
    ("lr: null\n", "key 'lr' (flag --lr) has invalid value None: expected a number, or leave the key out for the "
                   "default (0.1)"),
    ("epochs: ~\n", "key 'epochs' (flag --epochs) has invalid value None: expected an integer, or leave the key"),
    ("mean: null\n", "expected a list of numbers, or leave the key out for the default (0.485 0.456 0.406)"),
    ('epochs: "ten"\n', "key 'epochs' (flag --epochs) has invalid value 'ten': expected an integer"),
    ("lr: [0.1]\n", "key 'lr' (flag --lr) has invalid value [0.1]: expected a number"),
    ("tag: {a: 1}\n", "key 'tag' (flag --tag) has invalid value {'a': 1}: expected a string"),
    ("optimizer: [sgd]\n", "has invalid value ['sgd']: expected one of sgd, adam"),
    ("image_size: 32\n", "has invalid value 32: expected a list of 2 integers"),
    ("image_size: [32, null]\n", "has invalid value [32, None]: expected a list of 2 integers"),
    ("lr_steps: [10, true]\n", "has invalid value [10, True]: expected a list of numbers"),
])
def test_yaml_values_of_the_wrong_type_name_the_file_key_and_type(tmp_path, capsys, content, message):
    """lr: null passed the YAML check and died comparing None > 0 in the schedule check (a traceback)."""
    f = tmp_path / "c.yaml"
    f.write_text(content)
    with pytest.raises(SystemExit):
        config.parse_config(["--train", "--config", str(f)])
    err = capsys.readouterr().err
    assert f"{f}: key " in err and message in err and "Traceback" not in err


def test_yaml_null_is_the_value_of_a_flag_unset_by_default(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("resume: null\nclip_grad: null\nlr_steps: null\n")
    cfg = config.parse_config(["--train", "--config", str(f)])
    assert cfg.resume is None and cfg.clip_grad is None and cfg.lr_steps is None


@pytest.mark.parametrize("argv, message", [
    (["--optimizer", "lion"], "argument --optimizer: invalid choice: 'lion'"),
    (["--dataset", "lmdb"], "invalid dataset kind 'lmdb' (choose from folder, txt, zip, csv, wds, hf"),
    (["--label_col", "cls"], "--label_col names a column of a --dataset csv or hf dataset, but --dataset is folder: "
                             "drop it, or pass --dataset csv"),
    (["--dataset", "csv", "--image_col", "img"], "--image_col names a column of a --dataset hf dataset, but --dataset "
                                                 "is csv: drop it, or pass --dataset hf"),
    (["--dataset", "csv", "--path_col", "x", "--label_col", "x"], "--path_col and --label_col must name two columns"),
    (["--lr", "-1"], "--lr must be >= 0 (0: the weights stay as they start, a check of the pipeline), got -1.0"),
    (["--epochs", "0"], "--epochs must be >= 1"),
    (["--device", "tpu"], "--device must be cpu, cuda or cuda:N, got 'tpu'"),
    (["--label_smoothing", "1.5"], "--label_smoothing must be in [0, 1)"),
    (["--accumulation_steps", "0"], "--accumulation_steps must be >= 1"),
    (["--save_every_steps", "-1"], "--save_every_steps must be >= 0 (0 = off), got -1"),
    (["--evaluation", "--out", "p.csv"], "--out must end in .json, .yaml or .pkl"),
    (["--tag", "a/b"], "--tag may hold letters"),
    (["--mixup_prob", "1.5"], "--mixup_prob must be a probability in [0, 1], got 1.5"),
    (["--ohm_ratio", "0"], "--ohm_ratio must be in (0, 1]"),
    (["--threshold_low", "0.9", "--threshold_high", "0.5"], "need 0 <= low < high <= 1"),
    (["--scheduler", "multistep"], "--scheduler multistep needs --lr_steps"),
    (["--scheduler", "step", "--lr_steps", "30", "20"], "--lr_steps must be increasing positive epochs"),
    (["--scheduler", "multistep", "--lr_steps", "30", "--lr_ratios", "0.1", "0.01"],
     "--lr_ratios needs one value per --lr_steps milestone"),
    (["--make_curriculum", "--curriculum_thresholds", "0.5", "0.7", "--curriculum_weights", "1", "0.5"],
     "--curriculum_thresholds must decrease"),
    (["--make_curriculum", "--curriculum_weights", "1", "0.5"], "must pair up"),
    (["--ema_decay", "1"], "--ema_decay must be in [0, 1)"),
    (["--aug_policy", "cutout"], "argument --aug_policy: invalid choice: 'cutout'"),
    (["--scheduler", "linear"],
     "argument --scheduler: invalid choice: 'linear' (choose from 'step', 'multistep', 'cosine'"),
    (["--cache_dataset", "disk"], "argument --cache_dataset: invalid choice: 'disk'"),
    (["--cache_max_gb", "0"], "--cache_max_gb must be > 0, got 0.0"),
    (["--gpu_decode", "--cache_dataset", "memory"], "--gpu_decode and --cache_dataset memory exclude each other"),
    (["--gpu_decode", "--device", "cpu"], "--gpu_decode decodes with nvjpeg on a CUDA device, but --device is cpu"),
])
def test_flag_errors_name_flag_and_allowed_values(capsys, argv, message):
    """Values are checked under the mode that reads them (--train unless the case names another)."""
    mode = [] if argv[0].removeprefix("--") in config.MODES else ["--train"]
    with pytest.raises(SystemExit):
        config.parse_config([*mode, *argv])
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["--resume", "/no/such.pth"], "--resume: file '/no/such.pth' does not exist"),
    (["--class_weights", "nofile.txt"], "--class_weights: 'nofile.txt' is neither auto, numbers, nor an existing file"),
    (["--cost_matrix", "nofile.txt"], "--cost_matrix: file 'nofile.txt' does not exist"),
])
def test_missing_files_name_the_flag(capsys, argv, message):
    """The parser reads no file: main.py checks the mode's files after parsing, with the same message."""
    import main
    config.parse_config(["--train", *argv])
    assert main.main(["--train", *argv]) == 2
    assert message in capsys.readouterr().err


def test_evaluation_needs_a_checkpoint(capsys):
    with pytest.raises(SystemExit):
        config.parse_config(["--evaluation"])
    assert "--evaluation needs a checkpoint" in capsys.readouterr().err


def test_two_modes_refused(capsys):
    with pytest.raises(SystemExit):
        config.parse_config(["--train", "--evaluation"])
    assert "pick one mode" in capsys.readouterr().err


def test_saved_config_round_trips(tmp_path):
    cfg = config.parse_config(["--train", "--lr", "0.3", "--image_size", "20", "24", "--zip", "--tag", "x1"])
    config.save_config(cfg, tmp_path / "config.yaml")
    again = config.parse_config(["--config", str(tmp_path / "config.yaml")])
    assert vars(again) | {"config": None} == vars(cfg) | {"config": None}


def test_config_conflicts_ignore_resume_safe_keys():
    a = config.parse_config(["--train", "--lr", "0.1"])
    b = config.parse_config(["--train", "--lr", "0.2", "--epochs", "50", "-j", "0", "--save_every_steps", "100"])
    assert config.config_conflicts(config.config_to_dict(a), b) == {"lr": (0.1, 0.2)}


def test_knowledge_and_curriculum_need_a_checkpoint(capsys):
    for argv in (["--knowledge", "train"], ["--make_curriculum"]):
        with pytest.raises(SystemExit):
            config.parse_config(argv)
        assert "needs a checkpoint: add --resume" in capsys.readouterr().err


def test_training_options_without_train_are_refused(capsys):
    with pytest.raises(SystemExit):
        config.parse_config(["--lr_finder", "--curriculum_learning"])
    assert "--lr_finder ignores training options, but the command line gives --curriculum_learning" in \
        capsys.readouterr().err


def test_training_only_flags_on_the_command_line_of_another_mode_are_refused(tmp_path, capsys):
    ckpt = tmp_path / "best.pth"
    ckpt.write_bytes(b"x")
    for argv, named in [
        (["--evaluation", "--resume", str(ckpt), "--epochs", "3", "--lr", "0.1", "--ema", "--aug"],
         "--aug, --ema, --epochs, --lr: drop them"),
        (["--predict", str(tmp_path), "--resume", str(ckpt), "--hflip", "0.5"], "--hflip: drop it"),
        (["--lr_finder", "--epochs", "5", "--optimizer", "adam"], "--epochs: drop it"),  # the sweep reads --optimizer
        (["--throughput", "--warmup", "0", "--channels_last", "--compile"], "--warmup: drop it"),
        (["--flops", "--pretrained", str(ckpt)], "--pretrained: drop it"),
    ]:
        with pytest.raises(SystemExit):
            config.parse_config(argv)
        err = capsys.readouterr().err
        assert f"--{argv[0][2:]} ignores training options, but the command line gives {named}" in err, err
    # what those modes do read stays accepted
    assert config.parse_config(["--lr_finder", "--optimizer", "adam", "--aug", "--channels_last"]).optimizer == "adam"
    assert config.parse_config(["--throughput", "--channels_last", "--compile", "--amp"]).compile


def test_training_keys_from_yaml_are_accepted_by_other_modes(tmp_path):
    """A recipe's YAML sets training keys that --evaluation does not read: the user did not type them for
    this mode, so they are not refused (only flags given on the command line are)."""
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({"epochs": 3, "ema": True, "lr": 0.2, "aug": True, "curriculum_learning": True,
                                      "image_size": [32, 32]}))
    ckpt = tmp_path / "best.pth"
    ckpt.write_bytes(b"x")
    cfg = config.parse_config(["--config", str(recipe), "--evaluation", "--resume", str(ckpt)])
    assert cfg.evaluation and cfg.epochs == 3 and cfg.ema


def test_strategy_keys_from_yaml(tmp_path):
    f = tmp_path / "s.yaml"
    f.write_text(yaml.safe_dump({"aug": True, "aug_policy": "autoaugment", "autoaugment_policy": "svhn", "mixup": 0.2,
                                 "cutmix": 1.0, "criterion": "bce", "ghm_loss": True, "ghm_bins": 10,
                                 "scheduler": "multistep", "lr_steps": [3, 6], "lr_ratios": [0.1, 0.01],
                                 "optimizer": "ranger", "ema": True, "class_weights": [1, 2, 3],
                                 "curriculum_thresholds": [0.8, 0.2], "curriculum_weights": [1, 0.5]}))
    cfg = config.parse_config(["--train", "--config", str(f)])
    assert cfg.aug and cfg.autoaugment_policy == "svhn" and cfg.mixup == 0.2 and cfg.ghm_bins == 10
    assert cfg.lr_steps == [3.0, 6.0] and cfg.optimizer == "ranger" and cfg.class_weights == ["1", "2", "3"]
    assert cfg.curriculum_weights == [1.0, 0.5]


def _float_flags() -> list[tuple[str, int]]:
    """(flag, number of values) of every flag whose default is a float or a list of floats."""
    flags = []
    for action in config.build_parser()._actions:
        default = action.default
        values = default if isinstance(default, list) else [default]
        if values and all(isinstance(v, float) for v in values) and action.option_strings:
            flags.append((action.option_strings[-1], len(values) if isinstance(default, list) else 1))
    return flags


@pytest.mark.parametrize("bad", ["inf", "-inf", "1e400", "nan"])
def test_every_float_flag_refuses_non_finite_values(bad, capsys):
    flags = _float_flags()
    assert len(flags) > 30 and ("--lr", 1) in flags and ("--mean", 3) in flags
    for flag, n in flags:
        if n > 1 and bad.startswith("-"):
            continue  # argparse reads a lone "-inf" as a flag name (and "--lr=-inf" has no list form)
        with pytest.raises(SystemExit):
            config.parse_config(["--train", f"{flag}={bad}"] if n == 1 else ["--train", flag, *["0.5"] * (n - 1), bad])
        assert "is not a finite number" in capsys.readouterr().err, flag


@pytest.mark.parametrize("value", [float("inf"), "1e400", float("nan")])
def test_yaml_float_values_refuse_non_finite_values(tmp_path, value, capsys):
    f = tmp_path / "c.yaml"
    f.write_text(yaml.safe_dump({"lr": value, "image_size": [32, 32]}))
    with pytest.raises(SystemExit):
        config.parse_config(["--train", "--config", str(f)])
    assert "key 'lr' (flag --lr) has invalid value" in capsys.readouterr().err


def test_image_size_has_a_sane_maximum(capsys):
    """100000 x 100000 passed the old check (>= 8) and died allocating a 120 GB input tensor."""
    with pytest.raises(SystemExit):
        config.parse_config(["--train", "--image_size", "100000", "100000"])
    assert f"--image_size must be two integers in 8..{config.MAX_IMAGE_SIDE}, got [100000, 100000]" in \
        capsys.readouterr().err
    assert config.parse_config(["--train", "--image_size", "8", str(config.MAX_IMAGE_SIDE)]).image_size[1] == 4096


@pytest.mark.parametrize("text, problem", [(b"lr: [0.1\nepochs: 3\n", "line 2, column 7: expected ',' or ']'"),
                                           (b"\x00\xff\xfe", "can't decode byte 0xff"),
                                           (b"- a\n- b\n", "it holds a list, not a mapping of flags")])
def test_a_damaged_saved_config_is_one_clear_error(tmp_path, text, problem):
    path = tmp_path / "config.yaml"
    path.write_bytes(text)
    with pytest.raises(config.ConfigError) as e:
        config.load_saved_config(path)
    assert str(e.value).startswith(f"{path} is damaged (") and problem in str(e.value)
    assert "pass --overwrite to start afresh in that run directory, or use another --tag" in str(e.value)


def test_a_flag_added_after_a_run_was_made_conflicts_only_when_set_away_from_its_default():
    saved = config.config_to_dict(config.parse_config(["--train", "--lr", "0.1"]))
    del saved["interpolation"]  # a run made before --interpolation existed (it resized bilinear)
    assert config.config_conflicts(saved, config.parse_config(["--train", "--lr", "0.1"])) == {}
    assert config.config_conflicts(saved, config.parse_config(["--train", "--lr", "0.1", "--interpolation", "bicubic"])
                                   ) == {"interpolation": ("bilinear", "bicubic")}


def _write(folder, name, text):
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_base_files_merge_in_order_relative_to_the_file_that_names_them(tmp_path):
    """base: [a, b] merges a, then b, then the file; each base path is relative to its own file."""
    _write(tmp_path, "shared/root.yaml", "lr: 0.3\nepochs: 7\nmomentum: 0.5\n")
    _write(tmp_path, "shared/a.yaml", "base: root.yaml\nlr: 0.2\nimage_size: [40, 40]\nweight_decay: 0.01\n")
    _write(tmp_path, "b.yaml", "lr: 0.1\nimage_size: [20, 24]\n")
    top = _write(tmp_path, "runs/top.yaml", "base: [../shared/a.yaml, ../b.yaml]\nweight_decay: 0.02\n")
    cfg = config.parse_config(["--train", "--config", str(top), "--momentum", "0.7"])
    assert (cfg.lr, cfg.image_size, cfg.weight_decay, cfg.epochs, cfg.momentum) == (0.1, [20, 24], 0.02, 7, 0.7)


def test_base_merges_mappings_recursively_and_replaces_lists():
    under = {"a": {"x": 1, "y": {"p": 1, "q": 2}}, "l": [1, 2, 3], "s": 1}
    over = {"a": {"y": {"q": 3}, "z": 4}, "l": [9], "s": {"now": "a mapping"}}
    assert config.merge_config(under, over) == {"a": {"x": 1, "y": {"p": 1, "q": 3}, "z": 4}, "l": [9],
                                                "s": {"now": "a mapping"}}
    assert under["a"]["y"] == {"p": 1, "q": 2}  # the inputs are left as they were


def test_a_base_cycle_is_one_error_naming_the_chain(tmp_path, capsys):
    a = _write(tmp_path, "a.yaml", "base: b.yaml\nlr: 0.1\n")
    _write(tmp_path, "b.yaml", "base: [c.yaml]\n")
    _write(tmp_path, "c.yaml", "base: a.yaml\n")
    with pytest.raises(SystemExit):
        config.parse_config(["--train", "--config", str(a)])
    err = capsys.readouterr().err
    names = " -> ".join(str((tmp_path / n).resolve()) for n in ("a.yaml", "b.yaml", "c.yaml", "a.yaml"))
    assert "files that build on each other in a cycle: " + names in err and "Traceback" not in err
    assert err.count("\n") == 1


def test_a_file_named_twice_on_two_branches_is_no_cycle(tmp_path):
    _write(tmp_path, "root.yaml", "epochs: 5\n")
    _write(tmp_path, "a.yaml", "base: root.yaml\nlr: 0.2\n")
    _write(tmp_path, "b.yaml", "base: root.yaml\nmomentum: 0.4\n")
    top = _write(tmp_path, "top.yaml", "base: [a.yaml, b.yaml]\n")
    cfg = config.parse_config(["--train", "--config", str(top)])
    assert (cfg.epochs, cfg.lr, cfg.momentum) == (5, 0.2, 0.4)


@pytest.mark.parametrize("files, message", [
    ({"a.yaml": "lrr: 0.1\n"}, "--config: {a.yaml}: unknown key 'lrr' (did you mean lr"),
    ({"a.yaml": "epochs: many\n"}, "{a.yaml}: key 'epochs' (flag --epochs) has invalid value 'many'"),
    ({"a.yaml": "base: nowhere.yaml\n"}, "--config: {a.yaml}: base: file '{nowhere.yaml}' does not exist"),
    ({"a.yaml": "base: {x: 1}\n"}, "{a.yaml}: base: expected a file name or a list of file names"),
    ({"a.yaml": "base: [b.yaml, 3]\n"}, "{a.yaml}: base: expected a file name or a list"),
    ({"a.yaml": "- 1\n"}, "{a.yaml} must hold a mapping of flag names to values, got list"),
    ({"a.yaml": "lr: [\n"}, "{a.yaml} is not valid YAML"),
])
def test_errors_in_a_base_file_name_that_file(tmp_path, capsys, files, message):
    """The top file is fine; the problem is in its base (a.yaml), and the message names a.yaml, not top."""
    for name, text in files.items():
        _write(tmp_path, name, text)
    top = _write(tmp_path, "top.yaml", "base: a.yaml\nlr: 0.2\n")
    with pytest.raises(SystemExit):
        config.parse_config(["--train", "--config", str(top)])
    err = capsys.readouterr().err
    expected = message.replace("{a.yaml}", str(tmp_path / "a.yaml")).replace("{nowhere.yaml}",
                                                                             str(tmp_path / "nowhere.yaml"))
    assert expected in err and str(top) not in err and "Traceback" not in err


def test_a_bad_key_of_the_top_file_names_the_top_file(tmp_path, capsys):
    _write(tmp_path, "a.yaml", "lr: 0.2\n")
    top = _write(tmp_path, "top.yaml", "base: a.yaml\nepochz: 3\n")
    with pytest.raises(SystemExit):
        config.parse_config(["--train", "--config", str(top)])
    assert f"--config: {top}: unknown key 'epochz'" in capsys.readouterr().err


def test_the_saved_config_is_the_merged_flat_one(tmp_path):
    """config.yaml of a run holds every value and no base: it reproduces the run without the base files."""
    base = _write(tmp_path, "base.yaml", "lr: 0.3\nepochs: 4\n")
    top = _write(tmp_path, "top.yaml", "base: base.yaml\nepochs: 6\n")
    cfg = config.parse_config(["--train", "--config", str(top)])
    config.save_config(cfg, tmp_path / "config.yaml")
    saved = yaml.safe_load((tmp_path / "config.yaml").read_text())
    assert "base" not in saved and saved["lr"] == 0.3 and saved["epochs"] == 6
    base.unlink()
    again = config.parse_config(["--config", str(tmp_path / "config.yaml")])
    assert vars(again) | {"config": None} == vars(cfg) | {"config": None}


def test_the_recipes_share_their_base():
    """The two CPU recipes build on one base file, and each still holds its own settings."""
    folder = config.REPO_ROOT / "z_task_shell" / "configs"
    for name in ("digits_resnet18.yaml", "mosaic_multilabel.yaml"):
        assert yaml.safe_load((folder / name).read_text())["base"] == "cpu_resnet18_base.yaml"
        merged = config.read_config_file(folder / name)
        assert merged["optimizer"] == "sgd" and merged["lr"] == 0.05 and merged["arch"] == "resnet18"
    assert config.read_config_file(folder / "digits_resnet18.yaml")["image_size"] == [48, 48]
    assert config.read_config_file(folder / "mosaic_multilabel.yaml")["multi_label"] is True
