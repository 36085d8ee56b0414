"""The ``resnet50`` section: our loop vs a plain loop vs timm's model, on the same synthetic uint8 batches."""
from __future__ import annotations

import argparse
import time

from benchmarks.gpu_sections.common import ANCHOR_SHORT, MEAN, NO_CUDA, STD, Ctx, finite
from benchmarks.gpu_sections.context import CLOCKS, nvidia_smi


def synthetic_loader(ctx: Ctx, n: int, size: int, batch: int, classes: int):
    """Our decoded-cache loader (``CachedLoader``) over ``n`` random uint8 images held on the device."""
    import torch

    from dataloader.cache import CachedLoader
    from dataloader.loader import SeededSampler
    g = torch.Generator().manual_seed(0)
    cache = argparse.Namespace(images=torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=g)
                               .to(ctx.device), valid=torch.ones(n, dtype=torch.bool),
                               targets=torch.randint(0, classes, (n,), generator=g), dataset=None)
    return CachedLoader(cache, SeededSampler(n, shuffle=True, seed=0), batch, drop_last=True)


def our_training(ctx: Ctx, model, loader, epochs: int, dtype) -> float:
    """img/s of ``train_one_epoch`` over ``epochs`` epochs after a warm-up one (wall clock, device synced)."""
    import torch

    from criterions import create_criterion
    from dataloader import BatchPreprocessor
    from engine import train_one_epoch
    preprocess = BatchPreprocessor(MEAN, STD, ctx.device, channels_last=True)
    criterion, optimizer = create_criterion("softmax"), torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    seen = 0
    for epoch in range(epochs + 1):
        if epoch == 1:
            ctx.sync()
            start = time.perf_counter()
        loader.sampler.set_epoch(epoch)
        result = train_one_epoch(model, loader, criterion, optimizer, preprocess=preprocess, dtype=dtype,
                                 epoch=epoch, progress=False)
        seen += round(result["img_per_s"] * result["time"]) if epoch else 0  # the images it trained on
    ctx.sync()
    return finite(seen / (time.perf_counter() - start))


def our_inference(ctx: Ctx, model, loader, epochs: int, dtype) -> float:
    """img/s of ``evaluate`` over ``epochs`` passes after a warm-up one (wall clock, device synced)."""
    from dataloader import BatchPreprocessor
    from engine import evaluate
    preprocess = BatchPreprocessor(MEAN, STD, ctx.device, channels_last=True)
    for epoch in range(epochs + 1):
        if epoch == 1:
            ctx.sync()
            start = time.perf_counter()
        evaluate(model, loader, preprocess=preprocess, dtype=dtype)
    ctx.sync()
    return finite(epochs * len(loader) * loader.batch_size / (time.perf_counter() - start))


def plain_rate(ctx: Ctx, model, batches, epochs: int, dtype, train: bool) -> float:
    """The loop a user writes from the tutorials: normalise, autocast, forward (cross-entropy, backward,
    SGD step); img/s over ``epochs`` passes after a warm-up pass."""
    import torch
    mean = torch.tensor(MEAN, device=ctx.device).view(1, 3, 1, 1) * 255
    std = torch.tensor(STD, device=ctx.device).view(1, 3, 1, 1) * 255
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    model.train(train)

    def one_pass() -> None:
        for images, target in batches:
            x = ((images.float() - mean) / std).contiguous(memory_format=torch.channels_last)
            if not train:
                with torch.inference_mode(), torch.autocast(ctx.device.type, dtype=dtype):
                    model(x)
                continue
            with torch.autocast(ctx.device.type, dtype=dtype):
                loss = torch.nn.functional.cross_entropy(model(x), target)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

    one_pass()
    ctx.sync()
    start = time.perf_counter()
    for _ in range(epochs):
        one_pass()
    ctx.sync()
    return finite(epochs * sum(len(t) for _, t in batches) / (time.perf_counter() - start))


def section_resnet50(ctx: Ctx) -> None:
    import timm
    import torch

    from models import create_model
    p, dev = ctx.prof, ctx.device
    dtype = torch.bfloat16
    loader = synthetic_loader(ctx, p.r50_batch * p.r50_batches, p.r50_size, p.r50_batch, 1000)
    cache = loader.cache
    batches = [(cache.images[i:i + p.r50_batch], cache.targets[i:i + p.r50_batch].to(dev))
               for i in range(0, len(cache.targets), p.r50_batch)]
    ours_model = lambda: create_model(p.bench_arch, 1000)  # noqa: E731  (torchvision's, via our registry)
    timm_model = lambda: timm.create_model(p.bench_arch, num_classes=1000)  # noqa: E731
    sides = [("train", "ours: train_one_epoch + cached loader", ours_model,
              lambda m: our_training(ctx, m, loader, p.r50_epochs, dtype)),
             ("train", "plain loop", ours_model, lambda m: plain_rate(ctx, m, batches, p.r50_epochs, dtype, True)),
             ("train", "plain loop, timm's model (peer)", timm_model,
              lambda m: plain_rate(ctx, m, batches, p.r50_epochs, dtype, True)),
             ("train", "plain loop, cudnn.benchmark on", ours_model,
              lambda m: plain_rate(ctx, m, batches, p.r50_epochs, dtype, True) if ctx.cuda else NO_CUDA),
             ("inference", "ours: evaluate + cached loader", ours_model,
              lambda m: our_inference(ctx, m, loader, p.r50_epochs, dtype)),
             ("inference", "plain loop", ours_model, lambda m: plain_rate(ctx, m, batches, p.r50_epochs, dtype, False)),
             ("inference", "plain loop, timm's model (peer)", timm_model,
              lambda m: plain_rate(ctx, m, batches, p.r50_epochs, dtype, False))]
    plain: dict[str, float] = {}
    for mode, side, build, measure in sides:
        torch.manual_seed(0)
        torch.backends.cudnn.benchmark = "cudnn.benchmark" in side
        model = build().to(dev).to(memory_format=torch.channels_last)
        if ctx.cuda:
            torch.cuda.reset_peak_memory_stats()
        img_s = measure(model)
        if side == "plain loop":
            plain[mode] = img_s
        ctx.rec.row(mode=mode, side=side, model=f"{'timm' if 'timm' in side else 'torchvision'} {p.bench_arch}",
                    img_s=img_s,
                    vs_plain=img_s / plain[mode] if mode in plain and isinstance(img_s, float) else None,
                    peak_mem_gib=ctx.cuda_only(lambda: round(torch.cuda.max_memory_allocated() / 2**30, 2)),
                    anchor=ANCHOR_SHORT if mode == "train" else "")
        if side.startswith("ours: train") and ctx.cuda:
            ctx.rec.data["clocks_under_load"] = nvidia_smi(CLOCKS)
        del model
        if ctx.cuda:
            torch.cuda.empty_cache()
    torch.backends.cudnn.benchmark = False
    for row in ctx.rec.data["rows"]:  # ours is measured before the plain loop: its ratio is filled in last
        if row["vs_plain"] is None and isinstance(row["img_s"], float):
            row["vs_plain"] = row["img_s"] / plain[row["mode"]]
    ctx.rec.data.setdefault("clocks_under_load", NO_CUDA)
    ctx.rec.note(f"{p.bench_arch}: {p.r50_batch * p.r50_batches} random uint8 images at {p.r50_size}x{p.r50_size} "
                 f"held on {dev}, batch {p.r50_batch}, bf16 autocast, channels-last, SGD; one warm-up epoch then "
                 f"{p.r50_epochs} timed; cudnn.benchmark off (torch's default, as main.py runs) unless the row "
                 f"says so")
    ctx.rec.write()
