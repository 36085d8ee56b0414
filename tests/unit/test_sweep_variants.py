"""--sweep_only, and every variant of the strategies sweep (z_task_shell/configs/strategies.yaml) through
the training step: its flags pass main.py's checks, its loss and augmentation are built the way --train
builds them, and one epoch on the tiny digits gives a finite loss that moves the weights. The e2e recipe
test runs the sweep script itself on a few of the variants (--sweep_only)."""
from __future__ import annotations

import math

import pytest
import torch
import yaml

from applications.sweep import command_line_flags, select_variants
from config import ConfigError, parse_config
from experiments.sweep_plan import load_sweep
from helpers import STRATEGIES, strategy_variant_parts, sweep_file


def test_sweep_only_picks_variants_in_the_files_order_and_names_unknown_ones(tmp_path):
    spec = load_sweep(sweep_file(tmp_path, {"base": {"epochs": 1}, "variants": {"a": {}, "b": {"lr": 0.2},
                                                                                 "c": {"lr": 0.3}}}))
    assert [v.tag for v in select_variants(spec, ["c", "a"])] == ["a", "c"]
    assert [v.tag for v in select_variants(spec, None)] == ["a", "b", "c"]
    with pytest.raises(ConfigError, match=r"has no variant 'd'; its variants: a, b, c"):
        select_variants(spec, ["a", "d"])
    search = load_sweep(sweep_file(tmp_path, {"base": {}, "search": {"lr": {"low": 0.01, "high": 0.1}}}, "s.yaml"))
    with pytest.raises(ConfigError, match="a search"):
        select_variants(search, ["a"])


def test_sweep_only_is_not_passed_on_to_the_runs(tmp_path):
    cfg = parse_config(["--sweep", str(sweep_file(tmp_path, {"variants": {"a": {}}})), "--sweep_only", "a",
                        "--epochs", "2"])
    assert command_line_flags(cfg) == {"epochs": 2}


def test_multi_label_next_to_sweep_is_passed_on_with_its_data_and_its_own_criterion(tmp_path):
    sweep = str(sweep_file(tmp_path, {"variants": {"a": {}}}))
    cfg = parse_config(["--sweep", sweep, "--multi_label", "--dataset", "csv", "--data", str(tmp_path)])
    assert command_line_flags(cfg) == {"multi_label": True, "dataset": "csv", "data": str(tmp_path)}  # bce: derived
    asl = parse_config(["--sweep", sweep, "--multi_label", "--dataset", "csv", "--criterion", "asl"])
    assert command_line_flags(asl)["criterion"] == "asl"
    assert "criterion" not in command_line_flags(parse_config(["--sweep", sweep]))


STRATEGY_VARIANTS = list(yaml.safe_load(STRATEGIES.read_text())["variants"])


@pytest.mark.parametrize("tag", STRATEGY_VARIANTS)
def test_every_strategy_variant_trains_one_epoch(tag, tiny_data, tmp_path):
    _, parts = strategy_variant_parts(tag, tiny_data["folder"], tmp_path)  # as --train builds them
    before = [p.detach().clone() for p in parts.model.parameters()]
    result = parts.train_epoch(0, progress=False)
    assert math.isfinite(result["loss"]) and result["loss"] > 0, result
    assert any(not torch.equal(a, b) for a, b in zip(before, parts.model.parameters()))
