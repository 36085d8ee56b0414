"""applications/model_tools.py (--flops, --throughput, --summary, --publish) and benchmarks/cpu_inference.py."""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
from pathlib import Path

import torch
import torch.nn as nn

from applications import model_tools
from engine.state import TrainState
from helpers import calibrated_checkpoint, read_json, run_main
from models import create_model
from models.spec import ModelSpec
from utils.checkpoint import load_checkpoint, save_checkpoint


def tool(args: list[str]) -> tuple[dict, str]:
    """Run a model tool through main.py: its result and the table it printed before the result."""
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert run_main(args) == 0
    text = buf.getvalue()
    start = 0 if text.startswith("{") else text.index("\n{") + 1
    return json.loads(text[start:]), text[:start]


def counted_flops(model: nn.Module, size: int) -> int:
    """2 x multiply-adds of every conv and linear layer, counted by hand from their shapes."""
    total = 0

    def hook(module: nn.Module, args, output) -> None:
        nonlocal total
        if isinstance(module, nn.Conv2d):
            k = module.kernel_size[0] * module.kernel_size[1] * module.in_channels // module.groups
            total += 2 * output.numel() * k
        elif isinstance(module, nn.Linear):
            total += 2 * output.numel() * module.in_features
    handles = [m.register_forward_hook(hook) for m in model.modules()]
    with torch.no_grad():
        model(torch.zeros(1, 3, size, size))
    for h in handles:
        h.remove()
    return total


def test_flops_per_module_add_up_to_a_count_by_hand(capsys):
    result, table = tool(["--flops", "--arch", "resnet18", "--image_size", "64", "64", "--num_classes", "10"])
    model = create_model("resnet18", 10).eval()
    assert result["flops"] == counted_flops(model, 64)
    assert result["params"] == sum(p.numel() for p in model.parameters())
    rows = {r["module"]: r for r in result["modules"]}
    assert sum(r["flops"] for r in rows.values()) == result["flops"]
    assert rows["fc"]["flops"] == 2 * 512 * 10 and rows["layer4"]["params"] == 8_393_728
    assert "| layer4" in table and "| total" in table and f"{result['params']:,}" in table


def test_summary_lists_every_layer_with_its_output_shape():
    result, table = tool(["--summary", "--arch", "mobilenet_v3_small", "--image_size", "32", "32",
                          "--num_classes", "3"])
    model = create_model("mobilenet_v3_small", 3)
    assert result["params"] == sum(p.numel() for p in model.parameters())
    assert result["layers"] == len(list(model.named_modules())) and result["output_shape"] == "1x3"
    assert "| layer " in table and "output shape" in table
    lines = {line.split("|")[1].strip(): line for line in table.splitlines() if line.startswith("| ")}
    assert "1x16x16x16" in lines["features.0.0"] and "Conv2d" in lines["features.0.0"]
    assert "1x3" in lines["classifier.3"] and f"{3 * 1024 + 3:,}" in lines["classifier.3"]


def test_throughput_measures_each_variant(monkeypatch):
    monkeypatch.setattr(model_tools, "MIN_SECONDS", 0.0)
    monkeypatch.setattr(model_tools, "MIN_STEPS", 2)
    monkeypatch.setattr(model_tools, "WARMUP_STEPS", 1)
    result, table = tool(["--throughput", "--arch", "resnet18", "--image_size", "16", "16", "--num_classes", "3",
                          "-b", "4", "--channels_last", "--amp", "--device", "cpu"])
    assert list(result["variants"]) == ["eager", "channels_last", "amp"]
    for r in result["variants"].values():
        assert r["inference_img_s"] > 0 and r["train_img_s"] > 0
    assert "| channels_last" in table and "| amp" in table and "inference vs eager" in table


def test_publish_keeps_weights_names_and_config_only(tiny_data, tmp_path):
    data = tiny_data["folder"]
    ckpt = calibrated_checkpoint(tmp_path / "run", "resnet18", data, 16)
    cfg = argparse.Namespace(**load_checkpoint(ckpt)["config"])
    # A full training checkpoint, as train.py writes it: optimizer, schedule, RNG, history...
    model = create_model("resnet18", 3)
    model.load_state_dict(load_checkpoint(ckpt)["model"])
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(2, 3, 16, 16)).sum().backward()
    optimizer.step()
    model.load_state_dict(load_checkpoint(ckpt)["model"])  # the weights under test stay the calibrated ones
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    full = TrainState(model, optimizer, scheduler).capture(
        epoch=3, best_top1=50.0, best_epoch=3, spec=ModelSpec.from_config(vars(cfg), ["0", "1", "7"]),
        config=vars(cfg), history=[{"epoch": 0}])
    save_checkpoint(full, ckpt)

    result, _ = tool(["--publish", str(ckpt), str(tmp_path / "pub" / "resnet18_digits.pth")])
    published = tmp_path / "pub" / f"resnet18_digits-{result['sha256'][:8]}.pth"
    assert result["published"] == str(published) and published.is_file()
    assert hashlib.sha256(published.read_bytes()).hexdigest() == result["sha256"]
    assert result["size_mib"] < result["source_size_mib"] / 1.5  # the optimizer's momentum is gone
    slim = load_checkpoint(published)  # weights_only load
    assert set(slim) == {"model", "class_names", "config", "arch", "model_spec"}
    assert slim["class_names"] == ["0", "1", "7"] and slim["config"] == full["config"]
    assert slim["model_spec"] == full["model_spec"]
    assert all(torch.equal(slim["model"][k], v) for k, v in full["model"].items())
    again, _ = tool(["--publish", str(ckpt), str(tmp_path / "pub" / "resnet18_digits")])
    assert again["published"] == str(published)  # same content, same name

    for path in (ckpt, published):  # the published file evaluates exactly like the training checkpoint
        assert run_main(["--evaluation", "--resume", str(path), "--data", str(data), "-j", "0", "--no_progress",
                         "--out", str(tmp_path / f"{path.stem}.json"), "--output", str(tmp_path / "out")]) == 0
    assert read_json(tmp_path / "best.json") == read_json(tmp_path / f"{published.stem}.json")


def test_publish_to_safetensors_writes_no_pickle_and_reads_back(tiny_data, tmp_path):
    ckpt = calibrated_checkpoint(tmp_path / "run", "resnet18", tiny_data["folder"], 16)
    result, _ = tool(["--publish", str(ckpt), str(tmp_path / "pub" / "digits.safetensors")])
    published = tmp_path / "pub" / f"digits-{result['sha256'][:8]}.safetensors"
    assert result["published"] == str(published)
    data = published.read_bytes()
    assert hashlib.sha256(data).hexdigest() == result["sha256"]
    header = int.from_bytes(data[:8], "little")  # safetensors: a JSON header, then raw tensor bytes; no pickle
    assert json.loads(data[8:8 + header])["__metadata__"]["format"] == "pt" and b"PK\x03\x04" not in data[:4]
    source, slim = load_checkpoint(ckpt), load_checkpoint(published)
    assert set(slim) == {"model", "class_names", "config", "arch"} and slim["class_names"] == ["0", "1", "7"]
    assert slim["config"] == source["config"]
    assert slim["model"].keys() == source["model"].keys()
    assert all(torch.equal(slim["model"][k], v) for k, v in source["model"].items())


def test_a_published_safetensors_resumes_with_its_data_and_task_like_the_pth(mosaics, tmp_path):
    from helpers import multi_label_checkpoint
    ckpt = multi_label_checkpoint(tmp_path / "run", mosaics, arch="simple_cnn", image_size=16)
    result, _ = tool(["--publish", str(ckpt), str(tmp_path / "pub" / "mosaics.safetensors")])
    published = Path(result["published"])
    outputs = {}
    for path in (ckpt, published):  # no --data, no --multi_label, no --dataset: the file's saved config gives them
        out = tmp_path / f"{path.suffix[1:]}.json"
        assert run_main(["--evaluation", "--resume", str(path), "-j", "0", "--no_progress", "--out", str(out),
                         "--output", str(tmp_path / "out")]) == 0
        outputs[path.suffix] = read_json(out)
    assert outputs[".safetensors"] == outputs[".pth"] and outputs[".pth"]
    rows = outputs[".pth"]  # the mosaics' test images, read as label sets (a multi-label evaluation)
    assert rows[0]["path"].startswith(str(mosaics)) and all(isinstance(r["labels"], list) for r in rows)
