"""--sweep_only, and every variant of the strategies sweep (z_task_shell/configs/strategies.yaml) through
the training step: its flags pass main.py's checks, its loss and augmentation are built the way --train
builds them, and one epoch on the tiny digits gives a finite loss that moves the weights. The e2e recipe
test runs the sweep script itself on a few of the variants (--sweep_only)."""
from __future__ import annotations

import argparse
import math

import pytest
import torch
import yaml

from applications.common import build_dataset, build_loader, preprocessor
from applications.strategies import build_batch_hook, build_criterion, build_optimizer, build_policy
from applications.sweep import command_line_flags, run_flags, select_variants
from applications.sweep_plan import load_sweep
from config import ConfigError, build_parser, parse_config
from conftest import ROOT, TINY_SIZE
from dataloader import read_class_names
from engine import train_one_epoch
from models import create_model
from unit.test_experiments import sweep_file

STRATEGIES = ROOT / "z_task_shell/configs/strategies.yaml"


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


STRATEGY_VARIANTS = list(yaml.safe_load(STRATEGIES.read_text())["variants"])


@pytest.mark.parametrize("tag", STRATEGY_VARIANTS)
def test_every_strategy_variant_trains_one_epoch(tag, tiny_data, tmp_path):
    spec = load_sweep(STRATEGIES)
    (variant,) = select_variants(spec, [tag])
    tiny = {"data": str(tiny_data["folder"]), "arch": "simple_cnn", "image_size": [TINY_SIZE, TINY_SIZE],
            "batch_size": 8, "workers": 0, "epochs": 1, "warmup": 0}
    flags = run_flags({**spec.base, **tiny}, variant.values, tmp_path, tag)  # main.py's checks, as the sweep runs them
    cfg = argparse.Namespace(**{**vars(build_parser().parse_args([])), **flags, "train": True})
    device = torch.device("cpu")
    names = read_class_names(tiny_data["folder"], "folder")
    train_set = build_dataset(cfg, "train", names, train=True, policy=build_policy(cfg))
    loader = build_loader(cfg, train_set, train=True, device=device)
    criterion = build_criterion(cfg, [train_set.targets.count(c) for c in range(len(names))])
    torch.manual_seed(0)
    model = create_model(cfg.arch, len(names))
    before = [p.detach().clone() for p in model.parameters()]
    optimizer = build_optimizer(cfg, model, cfg.lr, len(names))
    result = train_one_epoch(model, loader, criterion, optimizer, preprocess=preprocessor(cfg, device),
                             batch_hook=build_batch_hook(cfg, train_set), clip_grad=cfg.clip_grad, progress=False)
    assert math.isfinite(result["loss"]) and result["loss"] > 0, result
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
