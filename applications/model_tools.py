"""Model tools: ``--flops``, ``--throughput``, ``--summary``, ``--publish CKPT OUT`` and ``--package CKPT DIR``.

    python main.py --flops --arch resnet50 --image_size 224 224        # params and FLOPs per top-level module
    python main.py --throughput --arch resnet18 -b 64 --channels_last --amp   # img/s, variants side by side
    python main.py --summary --arch mobilenet_v3_small --image_size 32 32      # layer table
    python main.py --publish output/resnet18/default/checkpoints/best.pth resnet18_digits
    python main.py --package output/resnet18/default/checkpoints/best.pth resnet18_digits --push_to_hub me/digits

The first three measure ``--arch`` at ``--image_size`` with ``--num_classes`` outputs (1000 when not
given), or, with ``--resume``, the checkpoint's model at its own input size. Tables go to stdout; the
numbers are also returned (and printed as JSON by main.py).
"""
from __future__ import annotations

import argparse
import copy
import hashlib
import io
import logging
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.nn as nn

from config import selected_mode
from engine import amp_dtype, autocast
from models import create_model, extract_state_dict
from models.stem import input_channels
from utils.atomic import write_bytes_atomic
from utils.checkpoint import load_checkpoint, safetensors_checkpoint
from utils.misc import resolve_device
from utils.table import format_table, human

from .setup.common import model_from_checkpoint

logger = logging.getLogger(__name__)

DEFAULT_NUM_CLASSES = 1000
# --throughput: calls before timing, then at least this many timed calls and this many seconds per measurement
WARMUP_STEPS, MIN_STEPS, MIN_SECONDS = 3, 5, 2.0


@dataclass
class ToolModel:
    model: nn.Module
    arch: str
    image_size: tuple[int, int]
    num_classes: int


def tool_model(cfg: argparse.Namespace) -> ToolModel:
    """The model to measure: the checkpoint's (``--resume``) or a fresh ``--arch``, on the CPU, in eval mode."""
    if cfg.resume:
        fallback = [str(i) for i in range(cfg.num_classes or DEFAULT_NUM_CLASSES)]
        model, spec = model_from_checkpoint(cfg.resume, cfg, fallback_class_names=fallback)
        return ToolModel(model.eval(), spec.arch, spec.image_size, spec.num_classes)
    num_classes = cfg.num_classes or DEFAULT_NUM_CLASSES
    model = create_model(cfg.arch, num_classes, in_chans=cfg.in_chans)
    return ToolModel(model.eval(), cfg.arch, tuple(cfg.image_size), num_classes)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# ---------------------------------------------------------------------------------------------------
# --flops


def count_flops(model: nn.Module, image_size: Sequence[int]) -> tuple[int, dict[str, dict[Any, int]]]:
    """FLOPs of one forward pass of a ``1 x 3 x H x W`` input (``torch.utils.flop_counter``; 1 multiply-add
    = 2 FLOPs): the total and the counts per module path."""
    from torch.utils.flop_counter import FlopCounterMode
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(torch.zeros(1, input_channels(model), *image_size))
    return counter.get_total_flops(), counter.get_flop_counts()


def flops(cfg: argparse.Namespace) -> dict[str, Any]:
    """Parameters and FLOPs (``torch.utils.flop_counter``; 1 multiply-add = 2 FLOPs) per top-level module."""
    tm = tool_model(cfg)
    total_flops, by_module = count_flops(tm.model, tm.image_size)
    root = type(tm.model).__name__
    rows = []
    for name, child in tm.model.named_children():
        rows.append({"module": name, "type": type(child).__name__, "params": count_parameters(child),
                     "flops": sum(by_module.get(f"{root}.{name}", {}).values())})
    own = sum(p.numel() for p in tm.model.parameters(recurse=False))
    if own:
        rows.append({"module": "(own parameters)", "type": root, "params": own, "flops": 0})
    total_params = count_parameters(tm.model)
    table = format_table(
        ["module", "type", "parameters", "FLOPs", "share of FLOPs"],
        [[r["module"], r["type"], f"{r['params']:,}", human(r["flops"]),
          f"{100.0 * r['flops'] / max(total_flops, 1):.1f}%"] for r in rows]
        + [["total", root, f"{total_params:,}", human(total_flops), "100.0%"]])
    print(f"{tm.arch} at {tm.image_size[0]}x{tm.image_size[1]}, {tm.num_classes} classes, batch 1 "
          f"(FLOPs = 2 x multiply-adds):\n{table}")
    return {"arch": tm.arch, "image_size": list(tm.image_size), "num_classes": tm.num_classes,
            "params": total_params, "flops": total_flops, "gflops": total_flops / 1e9, "modules": rows}


# ---------------------------------------------------------------------------------------------------
# --throughput


@dataclass
class Variant:
    """A way of running the model: how to prepare it and its input, and the autocast dtype."""
    model: nn.Module
    memory_format: torch.memory_format = torch.contiguous_format
    dtype: torch.dtype | None = None


def _eager(model: nn.Module, cfg: argparse.Namespace, device: torch.device) -> Variant:
    return Variant(model)


def _channels_last(model: nn.Module, cfg: argparse.Namespace, device: torch.device) -> Variant:
    return Variant(model.to(memory_format=torch.channels_last), torch.channels_last)


def _compile(model: nn.Module, cfg: argparse.Namespace, device: torch.device) -> Variant:
    return Variant(torch.compile(model))


def _amp(model: nn.Module, cfg: argparse.Namespace, device: torch.device) -> Variant:
    return Variant(model, dtype=amp_dtype(True, cfg.amp_dtype, device))


# flag -> variant; eager always runs, the others when their flag is given.
VARIANTS: dict[str, Callable[[nn.Module, argparse.Namespace, torch.device], Variant]] = {
    "eager": _eager, "channels_last": _channels_last, "compile": _compile, "amp": _amp}


def time_per_step(step: Callable[[], Any], device: torch.device, max_steps: int = 200) -> float:
    """Median seconds of ``step()`` after ``WARMUP_STEPS`` calls, over at least ``MIN_STEPS`` and ``MIN_SECONDS``."""
    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    for _ in range(WARMUP_STEPS):
        step()
    sync()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < max_steps and (len(times) < MIN_STEPS or time.perf_counter() - start < MIN_SECONDS):
        t = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def measure_variant(variant: Variant, batch: int, image_size: tuple[int, int], num_classes: int,
                    device: torch.device) -> dict[str, float]:
    """Images per second of inference and of a training step (forward, backward, SGD step)."""
    model = variant.model.to(device)
    x = torch.randn(batch, input_channels(model), *image_size, device=device)
    x = x.contiguous(memory_format=variant.memory_format)
    y = torch.randint(0, num_classes, (batch,), device=device)

    def infer() -> None:
        with torch.inference_mode(), autocast(device, variant.dtype):
            model(x)

    optimizer = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
    scaler = torch.amp.GradScaler(device.type) if variant.dtype == torch.float16 else None

    def train_step() -> None:
        with autocast(device, variant.dtype):
            loss = nn.functional.cross_entropy(model(x).float(), y)
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()

    model.eval()
    inference = time_per_step(infer, device)
    model.train()
    training = time_per_step(train_step, device)
    return {"inference_img_s": batch / inference, "train_img_s": batch / training}


def throughput(cfg: argparse.Namespace) -> dict[str, Any]:
    """Inference and training images/s at ``-b`` on the current device: eager, and each variant asked for."""
    tm = tool_model(cfg)
    device = resolve_device(cfg.device)
    names = ["eager"] + [name for name in VARIANTS if name != "eager" and getattr(cfg, name, False)]
    results = {}
    for name in names:
        logger.info("measuring %s (%s, batch %d, %s)", name, tm.arch, cfg.batch_size, device)
        variant = VARIANTS[name](copy.deepcopy(tm.model), cfg, device)
        results[name] = measure_variant(variant, cfg.batch_size, tm.image_size, tm.num_classes, device)
    base = results["eager"]
    table = format_table(
        ["variant", "inference img/s", "training img/s", "inference vs eager", "training vs eager"],
        [[name, f"{r['inference_img_s']:.1f}", f"{r['train_img_s']:.1f}",
          f"{r['inference_img_s'] / base['inference_img_s']:.2f}x", f"{r['train_img_s'] / base['train_img_s']:.2f}x"]
         for name, r in results.items()])
    print(f"{tm.arch} at {tm.image_size[0]}x{tm.image_size[1]}, batch {cfg.batch_size}, {device} "
          f"({torch.get_num_threads()} threads):\n{table}")
    return {"arch": tm.arch, "image_size": list(tm.image_size), "batch_size": cfg.batch_size, "device": str(device),
            "variants": results}


# ---------------------------------------------------------------------------------------------------
# --summary


def _shapes(output: Any) -> str:
    if isinstance(output, torch.Tensor):
        return "x".join(map(str, output.shape))
    if isinstance(output, (list, tuple)):
        return "(" + ", ".join(_shapes(o) for o in output) + ")"
    if isinstance(output, dict):
        return "{" + ", ".join(f"{k}: {_shapes(v)}" for k, v in output.items()) + "}"
    return type(output).__name__


def summary(cfg: argparse.Namespace) -> dict[str, Any]:
    """A table of every module: name (indented by depth), type, output shape at batch 1, parameters."""
    tm = tool_model(cfg)
    shapes: dict[str, str] = {}
    handles = []
    for name, module in tm.model.named_modules():
        def hook(mod: nn.Module, args: Any, output: Any, name: str = name) -> None:
            shapes.setdefault(name, _shapes(output))
        handles.append(module.register_forward_hook(hook))
    try:
        with torch.no_grad():
            tm.model(torch.zeros(1, input_channels(tm.model), *tm.image_size))
    finally:
        for handle in handles:
            handle.remove()
    rows = [{"name": name or "(model)", "depth": name.count(".") + 1 if name else 0, "type": type(module).__name__,
             "output_shape": shapes.get(name, "-"), "params": count_parameters(module)}
            for name, module in tm.model.named_modules()]
    total = count_parameters(tm.model)
    trainable = sum(p.numel() for p in tm.model.parameters() if p.requires_grad)
    size_mb = sum(p.numel() * p.element_size() for p in tm.model.parameters()) / 2**20
    table = format_table(["layer", "type", "output shape", "parameters"],
                         [["  " * r["depth"] + r["name"], r["type"], r["output_shape"], f"{r['params']:,}"]
                          for r in rows])
    print(f"{tm.arch}, input 1x3x{tm.image_size[0]}x{tm.image_size[1]}:\n{table}\n"
          f"parameters: {total:,} ({trainable:,} trainable), {size_mb:.2f} MiB in fp32")
    return {"arch": tm.arch, "image_size": list(tm.image_size), "params": total, "trainable_params": trainable,
            "size_mib": size_mb, "layers": len(rows), "output_shape": shapes.get("", "-")}


# ---------------------------------------------------------------------------------------------------
# --publish


PUBLISHED_KEYS = ("class_names", "config", "arch", "model_spec")


def publish_checkpoint(src: str | Path, out: str | Path) -> tuple[Path, str]:
    """Write ``OUT-<sha256[:8]>.pth`` holding only the weights, class names, model spec and config of ``src``;
    ``OUT`` ending in ``.safetensors``: ``OUT-<sha256[:8]>.safetensors``, the weights as safetensors and the rest
    as its JSON metadata (no pickle: ``--resume`` and ``--pretrained`` read it back).

    As MMClassification's ``publish_model.py``: the file is written, hashed, then named after its hash,
    so a download can be checked against its name. Returns the path and the full sha256.
    """
    ckpt = load_checkpoint(src)
    published: dict[str, Any] = {"model": extract_state_dict(ckpt)}
    published.update({k: ckpt[k] for k in PUBLISHED_KEYS if ckpt.get(k) is not None})
    dropped = sorted(k for k in ckpt if k not in published)
    out = Path(out)
    suffix = ".safetensors" if out.name.endswith(".safetensors") else ".pth"
    stem = out.name[:-len(suffix)] if out.name.endswith(suffix) else out.name
    if suffix == ".safetensors":
        data = safetensors_checkpoint(published["model"], published)
    else:
        buffer = io.BytesIO()
        torch.save(published, buffer)  # hashed before it is written: the name holds the hash
        data = buffer.getvalue()
    digest = hashlib.sha256(data).hexdigest()
    final = write_bytes_atomic(out.with_name(f"{stem}-{digest[:8]}{suffix}"), data)
    logger.info("published %s -> %s (dropped %s)", src, final, ", ".join(dropped) or "nothing")
    return final, digest


def publish(cfg: argparse.Namespace) -> dict[str, Any]:
    src, out = cfg.publish
    final, digest = publish_checkpoint(src, out)
    return {"published": str(final), "sha256": digest, "size_mib": final.stat().st_size / 2**20,
            "source_size_mib": Path(src).stat().st_size / 2**20}


# ---------------------------------------------------------------------------------------------------
# --package


def package(cfg: argparse.Namespace) -> dict[str, Any]:
    """Write the Hub package folder of a checkpoint (``export.package``) and, with ``--push_to_hub``, upload it."""
    from export.package import model_card, push_folder, run_facts, write_package
    src, out = cfg.package
    fallback = [str(i) for i in range(cfg.num_classes or DEFAULT_NUM_CLASSES)]
    model, spec = model_from_checkpoint(src, cfg, fallback_class_names=fallback)
    config = write_package(model.eval(), spec, out, model_card(spec, src, run_facts(src)),
                           repo=cfg.push_to_hub)
    result = {"package": str(out), "architecture": config["architecture"], "timm_loadable": config["timm_loadable"],
              "note": config.get("note", ""), "files": sorted(p.name for p in Path(out).iterdir())}
    if cfg.push_to_hub:
        result["commit_url"] = push_folder(out, cfg.push_to_hub)
    return result


TOOLS: dict[str, Callable[[argparse.Namespace], dict[str, Any]]] = {
    "flops": flops, "throughput": throughput, "summary": summary, "publish": publish, "package": package}


def run(cfg: argparse.Namespace) -> dict[str, Any]:
    """Run the model tool named by the mode flag."""
    return TOOLS[selected_mode(cfg)](cfg)
