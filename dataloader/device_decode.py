"""``--gpu_decode``: workers only read the files; JPEG batches are decoded on the GPU with nvjpeg.

On machines where the GPU waits for JPEG decoding, moving the decode to the GPU
(``torchvision.io.decode_jpeg(list, device='cuda')``, one batched nvjpeg call) frees the CPU workers
for reading. The transform then runs per image on the GPU, each under its sample's seed, exactly as
:class:`dataloader.datasets.ClassificationDataset` runs it in a worker, and the batch is stacked there.
Files that are not JPEG (or that nvjpeg refuses, such as CMYK) are decoded on the CPU by
:func:`dataloader.io.decode_rgb` instead, so every format still works.

The same code runs with ``device='cpu'`` (libjpeg-turbo through torchvision), which is how the tests
check it on machines without a GPU.
"""
from __future__ import annotations

import logging
from typing import Iterator

import torch
from torch.utils.data import Dataset, Sampler
from torchvision.io import ImageReadMode, decode_jpeg

from .datasets import ClassificationDataset, call_seeded
from .io import DEFAULT_MAX_IMAGE_PIXELS, ImageDecodeError, check_header, decode_rgb
from .workers import worker_loader

logger = logging.getLogger(__name__)


class _Encoded(Dataset):
    """``(file bytes as a uint8 tensor, label, index, seed)``: what a worker does under --gpu_decode.
    A file that cannot be read gives its ImageDecodeError in place of the bytes."""

    def __init__(self, dataset: ClassificationDataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: int | tuple[int, int]):
        index, seed = key if isinstance(key, tuple) else (key, 0)
        label = self.dataset.samples[index][1]
        try:
            data = self.dataset.read(index)
        except ImageDecodeError as e:
            return e, label, index, seed
        return torch.frombuffer(bytearray(data), dtype=torch.uint8), label, index, seed


def _is_jpeg(data: torch.Tensor) -> bool:
    return data.numel() > 3 and data[:3].tolist() == [0xFF, 0xD8, 0xFF]


def decode_batch(encoded: list[torch.Tensor | Exception], names: list[str], device: torch.device,
                 max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> list[torch.Tensor | Exception]:
    """Each file decoded to uint8 RGB on ``device``: JPEGs in one batched call, the rest on the CPU.

    Every header is checked against ``max_pixels`` on the CPU first (nvjpeg has no limit of its own). An
    undecodable, unreadable (an exception already in ``encoded``) or too large file gives its
    :class:`ImageDecodeError` in its place, for the caller to raise or skip.
    """
    out: list[torch.Tensor | Exception | None] = [None] * len(encoded)
    for i, data in enumerate(encoded):
        if isinstance(data, Exception):
            out[i] = data
            continue
        try:
            check_header(data.numpy().data, names[i], max_pixels)
        except ImageDecodeError as e:
            out[i] = e
    jpegs = [i for i, data in enumerate(encoded) if out[i] is None and _is_jpeg(data)]
    if jpegs:
        if device.type == "cuda":
            # torchvision's CUDA decoder allocates its outputs on this stream but has nvJPEG write them from
            # another without waiting for this one (pytorch/vision#9606): a block the caching allocator
            # recycles can still be read by queued kernels and is overwritten under them. The training loop
            # no longer waits for the GPU every step, and an H200 run then got a nan loss at batch 4
            # (benchmarks/gpu_check.py): drain this stream first.
            torch.cuda.current_stream(device).synchronize()
        try:
            decoded = decode_jpeg([encoded[i] for i in jpegs], mode=ImageReadMode.RGB, device=device)
            for i, image in zip(jpegs, decoded):
                out[i] = image
        except RuntimeError as e:  # one bad or unsupported file fails the batch: fall back file by file
            logger.debug("batched JPEG decode failed (%s); decoding file by file", e)
    for i, image in enumerate(out):
        if image is None:
            try:
                out[i] = decode_rgb(encoded[i].numpy().tobytes(), name=names[i], max_pixels=max_pixels).to(device)
            except ImageDecodeError as e:
                out[i] = e
    return out


class DeviceDecodeLoader:
    """A DataLoader look-alike: workers read bytes, the batch is decoded and transformed on ``device``.

    Yields ``(uint8 images on device, targets, indices)`` like the standard loader; it has what the loops
    use of a DataLoader (``sampler``, ``batch_size``, ``drop_last``, ``dataset``, ``len``).
    """

    def __init__(self, dataset: ClassificationDataset, sampler: Sampler, *, batch_size: int, drop_last: bool,
                 workers: int, device: torch.device | str):
        self.dataset, self.sampler, self.batch_size, self.drop_last = dataset, sampler, batch_size, drop_last
        self.device = torch.device(device)
        self.loader = worker_loader(_Encoded(dataset), sampler, batch_size=batch_size, workers=workers,
                                    drop_last=drop_last, collate_fn=list)

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        transform = self.dataset.transform
        for batch in self.loader:
            names = [self.dataset._describe(self.dataset.samples[index][0]) for _, _, index, _ in batch]
            images, kept = [], []
            decoded = decode_batch([item[0] for item in batch], names, self.device, self.dataset.max_pixels)
            for image, item in zip(decoded, batch):
                if isinstance(image, Exception):
                    self.dataset.skip_or_raise(image)
                    continue
                if transform is not None:
                    image = call_seeded(transform, image, item[3])
                images.append(image)
                kept.append(item)
            if not kept:
                yield (torch.empty(0, dtype=torch.uint8), torch.empty(0, dtype=torch.long),
                       torch.empty(0, dtype=torch.long))
                continue
            yield (torch.stack(images), torch.tensor([item[1] for item in kept]),
                   torch.tensor([item[2] for item in kept]))

