"""The ``input_path`` section: JPEG decoding on CPU workers vs nvjpeg, the decoded cache on the device."""
from __future__ import annotations

from benchmarks.gpu_sections.common import MEAN, NO_CUDA, STD, Ctx, digits_root, finite
from benchmarks.gpu_sections.resnet50 import our_training


def loader_rate(ctx: Ctx, loader) -> float:
    """img/s of preprocessed batches on the device from one epoch of ``loader`` (after its first batch)."""
    from benchmarks.data_pipeline import rate
    from dataloader import BatchPreprocessor
    preprocess = BatchPreprocessor(MEAN, STD, ctx.device, channels_last=True)
    loader.sampler.set_epoch(0)
    return finite(rate(((preprocess(x), t) for x, t, _ in loader), images=len(loader.dataset), sync=ctx.sync))


def section_input_path(ctx: Ctx) -> None:
    import torch

    from benchmarks.make_photo_set import make_photo_set
    from dataloader import ClassificationDataset, create_loader, create_transform
    from models import create_model
    p, dev, w = ctx.prof, ctx.device, ctx.workers()
    photos = make_photo_set(ctx.args.photos, train_per_class=p.photos_per_class, val_per_class=1,
                            classes=p.photo_classes)
    digits = digits_root(ctx)
    sets = {
        "photos": (ClassificationDataset(photos, "folder", "train", transform=create_transform(
            True, (p.photo_size,) * 2, train_resize="rrc", hflip=0.5)), p.photo_batch, p.photo_arch, p.photo_size),
        "digits": (ClassificationDataset(digits, "folder", "train", transform=create_transform(
            True, (p.digits_size,) * 2, train_resize="rrc", rrc_scale=(0.6, 1.0))), p.digits_batch, p.digits_arch,
            p.digits_size)}
    paths = [("photos", "CPU decode workers", {}, ""),
             ("photos", "--gpu_decode", {"decode_on_device": True},
              "" if ctx.cuda else f"nvjpeg {NO_CUDA}: the same loader decoded on the CPU (libjpeg-turbo)"),
             ("digits", "CPU decode workers", {}, ""),
             ("digits", "--cache_dataset memory", {"cache": "memory"},
              "" if ctx.cuda else f"cache on the GPU {NO_CUDA}: the same cache held on the CPU")]
    base: dict[str, float] = {}
    for name, path, kwargs, skipped in paths:
        dataset, batch, arch, size = sets[name]
        loader = create_loader(dataset, batch_size=batch, workers=w, train=True, seed=0, pin_memory=ctx.cuda,
                               device=dev, **kwargs)
        loader_img_s = loader_rate(ctx, loader)
        torch.manual_seed(0)
        model = create_model(arch, len(dataset.class_names)).to(dev).to(memory_format=torch.channels_last)
        model_img_s = our_training(ctx, model, loader, 1, torch.bfloat16)
        base.setdefault(name, model_img_s)
        ctx.rec.row(data=f"{name}: {len(dataset)} images", path=path, device=str(dev), workers=w,
                    loader_img_s=loader_img_s, model=f"{arch} {size}x{size} b{batch}", into_model_img_s=model_img_s,
                    vs_cpu_workers=model_img_s / base[name], **({"skipped": skipped} if skipped else {}))
        del loader, model
    ctx.rec.note(f"loader img/s: normalised batches on {dev} from one epoch (after its first batch); into "
                 f"the model: train_one_epoch with bf16 autocast and channels-last, one warm-up epoch then one "
                 f"timed; photos {p.photo_size}x{p.photo_size} RandomResizedCrop + flip, digits the quickstart "
                 f"recipe's crop; {w} worker process(es)")
