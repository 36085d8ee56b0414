"""``--extract_features SPLIT --resume CKPT``: each image's embedding, for search, deduplication and linear probes.

Writes into the run folder:

- ``features_<split>.npy``: float32 ``N x D``, row i the pooled input of the classifier head for image i
  (``engine.features``: any family, the evaluation preprocessing of the checkpoint);
- ``features_<split>.csv``: the index, one row per image in the same order: ``row,path,label,class_name``
  (``path`` relative to ``--data``, as the dataset names it; a multi-label image's labels joined by ``;``);
- ``features_<split>.json``: the sidecar, written last: the checkpoint that produced them (path, size, mtime,
  sha256), the split, the data folder, the row count and both files' sha256, so that a reader can check that the
  pair belongs together (``utils.feature_files``: a kill mid-write leaves no sidecar, never a stale pair vouched
  for).

Read them back with ``utils.feature_files.load_features`` (checked), or ``numpy.load`` and ``csv`` /
``pandas.read_csv``; ``--evaluation --knn K`` scores a k-nearest-neighbour classifier on such embeddings.
"""
from __future__ import annotations

import argparse
import csv
import io
import logging
from typing import Any, Sequence

import numpy as np
import torch

from utils.atomic import remove_stale_temporaries
from utils.feature_files import feature_paths, write_features
from utils.misc import log_to_file

from .setup.common import checkpoint_run_dir, embed_split, restore_for_inference

logger = logging.getLogger(__name__)

INDEX_COLUMNS = ("row", "path", "label", "class_name")


def run(cfg: argparse.Namespace) -> dict[str, Any]:
    run_dir = checkpoint_run_dir(cfg.resume, cfg.output, cfg.arch)
    with log_to_file(run_dir / "log.txt"):
        restored = restore_for_inference(cfg)
        dataset, result = embed_split(cfg, restored, cfg.extract_features, fallback=True,
                                      progress=not cfg.no_progress)
        keys = [dataset.key(i) for i in result["indices"].tolist()]
        features = result["features"].numpy().astype(np.float32, copy=False)
        index = index_text(keys, result["targets"], restored.class_names)
        remove_stale_temporaries(run_dir, dead_owners_only=True)  # what a killed extraction left
        sidecar = write_features(run_dir, dataset.split, features, index, checkpoint=cfg.resume, data=cfg.data)
        npy, index_path, sidecar_path = feature_paths(run_dir, dataset.split)
        logger.info("features of %s on %s split: %d images x %d dimensions (the classifier head's input) in %s, "
                    "index in %s, sidecar (checkpoint, sha256 of both) in %s", cfg.resume, dataset.split, len(keys),
                    sidecar["dim"], npy, index_path, sidecar_path)
        return {"features": str(npy), "index": str(index_path), "sidecar": str(sidecar_path), "split": dataset.split,
                "count": len(keys), "dim": sidecar["dim"], "checkpoint_sha256": sidecar["checkpoint"]["sha256"],
                "top1": result["top1"]}


def index_text(paths: Sequence[str], targets: torch.Tensor, class_names: Sequence[str]) -> str:
    """The index csv: ``row,path,label,class_name`` per image (targets: class indices, or multi-hot rows)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(INDEX_COLUMNS)
    for row, (path, target) in enumerate(zip(paths, targets)):
        labels = target.nonzero().flatten().tolist() if target.dim() else [int(target)]
        writer.writerow([row, path, ";".join(map(str, labels)), ";".join(class_names[i] for i in labels)])
    return out.getvalue()

