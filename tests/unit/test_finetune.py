"""Fine-tuning: weights by name from each library's cache (no network, ever), preprocessing that follows
the weights, the offline message, a frozen backbone, per-group LRs, precise batch-norm statistics."""
from __future__ import annotations

import argparse
import dataclasses

import pytest
import torch
import torch.nn as nn

from helpers import put_in_cache
from models import create_model
from models.finetune import head_parameter_names, update_bn_stats
from models.hub import WeightsUnavailable, fetch_weights, resolve_weights
from models.registry import build_model

FAMILIES = ["resnet18", "timm/test_resnet", "efficientnet-b0", "resnest50"]


@pytest.mark.parametrize("arch", FAMILIES)
def test_imagenet_by_name_loads_the_cached_tensors(arch, caches):
    saved = put_in_cache(arch, caches)
    model = create_model(arch, 3, pretrained="imagenet")
    head = head_parameter_names(model, 3)
    state = model.state_dict()
    assert set(state) == set(saved)
    for k, v in state.items():
        if k in head:
            assert v.shape[0] == 3  # the new head
        else:
            assert torch.equal(v, saved[k]), k


def test_torchvision_weights_name_and_unknown_names(caches):
    w = resolve_weights("resnet50", "IMAGENET1K_V2")
    assert w.name == "ResNet50_Weights.IMAGENET1K_V2" and w.cache_path.name == "resnet50-11ad3fa6.pth"
    assert w.cache_path.parent == caches / "torch" / "hub" / "checkpoints"
    assert w.preprocessing["crop_pct"] == pytest.approx(224 / 232, abs=1e-4)
    with pytest.raises(ValueError, match="IMAGENET1K_V1, IMAGENET1K_V2"):
        resolve_weights("resnet50", "IMAGENET1K_V9")
    with pytest.raises(ValueError, match="a1_in1k"):
        resolve_weights("timm/resnet50", "nope_in1k")
    assert resolve_weights("timm/resnet50", "a1_in1k").name == "timm/resnet50.a1_in1k"


def test_offline_and_unreachable_give_one_message(caches, monkeypatch):
    w = resolve_weights("resnet18", "imagenet")
    with pytest.raises(WeightsUnavailable) as offline:
        fetch_weights(w)
    message = str(offline.value)
    for part in ("ResNet18_Weights.IMAGENET1K_V1", w.url, str(caches / "torch/hub/checkpoints/resnet18-f37072fd.pth"),
                 "--pretrained PATH", "HF_HUB_OFFLINE=1"):
        assert part in message
    # a host that refuses the connection (a local closed port: no network is touched) reads the same
    monkeypatch.delenv("HF_HUB_OFFLINE")
    unreachable = dataclasses.replace(w, url="https://127.0.0.1:9/resnet18-f37072fd.pth")
    with pytest.raises(WeightsUnavailable, match=r"127\.0\.0\.1 cannot be reached.*--pretrained PATH"):
        fetch_weights(unreachable)


def _cfg(**kw) -> argparse.Namespace:
    base = dict(optimizer="sgd", weight_decay=1e-4, momentum=0.9, nesterov=False, lookahead=False,
                lookahead_alpha=0.5, lookahead_k=6, head_lr_mult=1.0, layer_decay=None, num_classes=None)
    return argparse.Namespace(**{**base, **kw})


def _lr_by_name(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, float]:
    ids = {id(p): g["lr"] for g in optimizer.param_groups for p in g["params"]}
    return {n: ids[id(p)] for n, p in model.named_parameters()}


def test_head_lr_mult_and_layer_decay_give_per_group_lrs():
    from applications.setup.strategies import build_optimizer
    from optim import base_lr, create_scheduler
    model = create_model("resnet18", 3)
    lrs = _lr_by_name(model, build_optimizer(_cfg(head_lr_mult=10.0), model, 0.01, 3))
    assert lrs["fc.weight"] == lrs["fc.bias"] == pytest.approx(0.1)
    assert {v for k, v in lrs.items() if not k.startswith("fc.")} == {0.01}

    opt = build_optimizer(_cfg(head_lr_mult=10.0, layer_decay=0.5), model, 0.01, 3)
    lrs = _lr_by_name(model, opt)
    # resnet18's layers: conv1, bn1, the 8 blocks layer1.0 ... layer4.1, then the head fc
    order = ["conv1.", "bn1."] + [f"layer{i}.{j}." for i in range(1, 5) for j in range(2)]
    for name, lr in lrs.items():
        below_head = len(order) - next(i for i, p in enumerate(order) if name.startswith(p)) if name[:3] != "fc." else 0
        expected = 0.1 if name.startswith("fc.") else 0.01 * 0.5 ** below_head
        assert lr == pytest.approx(expected, rel=1e-12), name
    # the schedule scales every group alike, and the reported LR is the base one
    sched = create_scheduler(opt, schedule="cosine", total_steps=10, warmup_steps=0)
    for _ in range(3):
        opt.step()
        sched.step()
    factor = base_lr(opt) / 0.01
    assert 0 < factor < 1
    for name, lr in _lr_by_name(model, opt).items():
        assert lr == pytest.approx(lrs[name] * factor, rel=1e-9), name


def test_layer_decay_on_a_timm_model_uses_its_group_matcher():
    from models.finetune import layer_ids
    model = create_model("timm/test_resnet", 3)
    ids = layer_ids(model, head_parameter_names(model, 3))
    assert ids["fc.weight"] == max(ids.values()) and ids["conv1.0.weight"] == 0
    assert ids["layer1.0.conv1.weight"] < ids["layer4.0.conv1.weight"] < ids["fc.weight"]


def test_precise_bn_changes_only_running_statistics():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.LazyLinear(2))
    model(torch.randn(2, 3, 8, 8))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    batches = [torch.randn(5, 3, 8, 8) * 3 + 1 for _ in range(4)]
    model.eval()
    assert update_bn_stats(model, iter(batches), num_batches=3) == 3
    after = model.state_dict()
    changed = {k for k in after if not torch.equal(after[k], before[k])}
    assert changed == {"1.running_mean", "1.running_var"}
    assert not model.training and model[1].momentum == 0.1
    means = torch.stack([model[0](b).mean((0, 2, 3)) for b in batches[:3]]).mean(0)  # each batch weighs alike
    assert torch.allclose(after["1.running_mean"], means, atol=1e-5)


def test_precise_bn_leaves_frozen_batch_norms_alone():
    from models.finetune import freeze_backbone
    model = create_model("resnet18", 3)
    freeze_backbone(model, head_parameter_names(model, 3))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    update_bn_stats(model, iter([torch.randn(4, 3, 32, 32)]), num_batches=1)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_scratch_models_get_bn_momentum_0_1_pretrained_keep_their_own(tmp_path):
    scratch = create_model("mobilenet_v3_small", 10)
    assert {m.momentum for m in scratch.modules() if isinstance(m, nn.BatchNorm2d)} == {0.1}
    path = tmp_path / "w.pth"
    torch.save(build_model("efficientnet-b0", 10).state_dict(), path)
    tuned = create_model("efficientnet-b0", 10, pretrained=str(path))
    assert {round(m.momentum, 6) for m in tuned.modules() if isinstance(m, nn.BatchNorm2d)} == {0.01}


def test_drop_rates_reach_the_model_or_are_refused():
    model = create_model("timm/test_resnet", 3, drop_rate=0.25, drop_path_rate=0.1)
    assert model.drop_rate == 0.25
    assert create_model("efficientnet-b0", 3, drop_rate=0.3)._global_params.dropout_rate == 0.3
    with pytest.raises(ValueError, match="--drop_path_rate: resnest50"):
        create_model("resnest50", 3, drop_path_rate=0.1)
    with pytest.raises(ValueError, match="--drop_rate: resnet18 does not take"):
        create_model("resnet18", 3, drop_rate=0.1)


def test_yaml_keys_and_checks(tmp_path, tiny_data):
    from config import ConfigError, parse_config
    path = tmp_path / "ft.yaml"
    path.write_text("pretrained: imagenet\nfreeze_backbone: true\nunfreeze_epoch: 1\nhead_lr_mult: 10\n"
                    "layer_decay: 0.7\nprecise_bn: 4\ndrop_rate: 0.2\ndrop_path_rate: 0.05\n")
    cfg = parse_config(["--train", "--config", str(path), "--data", str(tiny_data["folder"])])
    assert (cfg.pretrained, cfg.freeze_backbone, cfg.unfreeze_epoch, cfg.head_lr_mult, cfg.layer_decay,
            cfg.precise_bn, cfg.drop_rate, cfg.drop_path_rate) == ("imagenet", True, 1, 10.0, 0.7, 4, 0.2, 0.05)
    assert cfg.mean is None  # the weights will say
    assert parse_config(["--train", "--data", str(tiny_data["folder"])]).mean == [0.485, 0.456, 0.406]
    with pytest.raises(SystemExit):
        parse_config(["--train", "--unfreeze_epoch", "2"])
    with pytest.raises(SystemExit):
        parse_config(["--train", "--layer_decay", "1.5"])
    assert ConfigError
