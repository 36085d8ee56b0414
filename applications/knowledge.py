"""``--knowledge SPLIT --resume TEACHER.pth``: write the teacher's probabilities for distillation.

``DATA/distill_<arch>.txt`` holds one line per image, ``path,p0,...,pK`` (probabilities under the
teacher's own head: softmax, or sigmoid for a ``bce`` teacher), and ``DATA/label.txt`` the one-hot
labels in the same format. Existing files are kept unless ``--overwrite``.

A multi-label checkpoint is refused: the files are the soft targets of ``--distill``, which trains single-label
models only (a softmax distribution per image; a multi-label student has no such target).
"""
from __future__ import annotations

import argparse
import logging
from typing import Any

import torch.nn.functional as F

from utils.metrics import probabilities
from utils.misc import log_to_file
from utils.sidefiles import write_rows

from .setup.common import checkpoint_run_dir, predict_split, restore_for_inference, teacher_file

logger = logging.getLogger(__name__)


def run(cfg: argparse.Namespace) -> dict[str, Any]:
    with log_to_file(checkpoint_run_dir(cfg.resume, cfg.output, cfg.arch) / "log.txt"):
        restored = restore_for_inference(cfg)
        if restored.spec.multi_label:
            raise ValueError(f"--knowledge: {cfg.resume} is a multi-label model; teacher files are the softmax "
                             f"targets of --distill, which trains single-label models only")
        out = teacher_file(cfg, restored.spec.arch)
        labels_out = out.parent / "label.txt"
        for path in (out, labels_out):
            if path.exists() and not cfg.overwrite:
                raise FileExistsError(f"{path} already exists; pass --overwrite to replace it")
        dataset, result = predict_split(cfg, restored, cfg.knowledge, progress=not cfg.no_progress)
        probs = probabilities(result["logits"], restored.spec.head, restored.spec.temperature)
        onehot = F.one_hot(result["targets"], len(restored.class_names))
        keys = [dataset.key(i) for i in result["indices"].tolist()]
        write_rows(out, zip(keys, probs.tolist()), overwrite=True)
        write_rows(labels_out, zip(keys, onehot.tolist()), overwrite=True, fmt="{:d}")
        logger.info("teacher %s on %s split (%d images, top-1 %.2f): wrote %s and %s", cfg.resume, dataset.split,
                    len(keys), result["top1"], out, labels_out)
        return {"teacher_file": str(out), "label_file": str(labels_out), "count": len(keys), "top1": result["top1"]}
