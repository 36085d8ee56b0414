"""Pooled embeddings (what the classifier head reads) and a k-nearest-neighbour classifier on them.

An image's embedding is the input of the model's classifier head, captured by a forward pre-hook on it
(``models.classifier_name``: the last Linear/Conv2d with one output per class), so every family works without
a per-family ``forward_features``: torchvision's ``fc``/``classifier``, timm's ``head.fc``, efficientnet-pytorch's
``_fc`` all read the pooled (and, where the family has one, normalised) features. A head that reads a map (a 1x1
convolution, as squeezenet's) gets it averaged over its positions; a Linear head that reads tokens, over them.

The k-NN classifier is DINO's weighted k-NN (Caron et al. 2021; MMPretrain's retrieval evaluation): cosine
similarity to a memory bank (the training split's embeddings), the k most similar vote for their class with
weight ``exp(similarity / 0.07)``; ``vote="majority"`` gives each of the k one vote instead. Ties go to the
lower class index, as scikit-learn's ``KNeighborsClassifier`` breaks them.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Callable, Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F

from models import classifier_name
from utils.distributed import env_world_size

from .loops import evaluate

KNN_TEMPERATURE = 0.07  # DINO's (and MMPretrain's) temperature of the weighted vote
KNN_VOTES = ("weighted", "majority")
_QUERY_CHUNK = 1024  # queries per similarity matrix: memory grows with chunk x bank size


def _pool(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The head's input as one vector per image (``N x D``)."""
    x = x.detach().float()
    if x.dim() == 2:
        return x
    if isinstance(module, nn.Conv2d):  # N x C x H x W: average over the positions
        return x.flatten(2).mean(2)
    return x.flatten(1, -2).mean(1)  # a Linear over N x ... x D: average over the tokens


@contextmanager
def capture_embeddings(model: nn.Module, num_classes: int) -> Iterator[list[torch.Tensor]]:
    """A list that fills, one CPU ``N x D`` tensor per forward pass, with the input of ``model``'s classifier head."""
    name = classifier_name(model, num_classes)
    if name is None:
        raise ValueError(f"{type(model).__name__} has no Linear or Conv2d layer with {num_classes} outputs (one per "
                         f"class): found no classifier head whose input is the image's embedding")
    head = model.get_submodule(name)
    store: list[torch.Tensor] = []
    handle = head.register_forward_pre_hook(lambda module, args: store.append(_pool(module, args[0]).cpu()))
    try:
        yield store
    finally:
        handle.remove()


def embed(model: nn.Module, loader: torch.utils.data.DataLoader, num_classes: int, *,
          preprocess: Callable[[torch.Tensor], torch.Tensor], dtype: torch.dtype | None = None,
          multi_label: bool = False, progress: bool = False, desc: str = "features") -> dict[str, Any]:
    """``evaluate``'s result with its outputs (logits, targets, dataset indices, in loader order) and each image's
    embedding (``features``, float32 ``N x D`` in the same order). One process only: under ``torchrun`` each
    rank would hold only its shard's embeddings."""
    if env_world_size() > 1:
        raise ValueError("embeddings (--extract_features, --knn) are computed in one process: run without torchrun")
    with capture_embeddings(model, num_classes) as store:
        result = evaluate(model, loader, preprocess=preprocess, dtype=dtype, return_outputs=True,
                          multi_label=multi_label, progress=progress, desc=desc)
    result["features"] = torch.cat(store) if store else torch.empty(0)
    if len(result["features"]) != len(result["indices"]):  # a head called more or less than once per image
        raise ValueError(f"the classifier head ran on {len(result['features'])} images for {len(result['indices'])} "
                         f"evaluated: this model's head is not called once per image")
    return result


def knn_predict(bank: torch.Tensor, bank_labels: torch.Tensor, queries: torch.Tensor, k: int, num_classes: int,
                vote: str = "weighted", temperature: float = KNN_TEMPERATURE) -> torch.Tensor:
    """Class index of each query by its ``k`` most cosine-similar rows of ``bank`` (labels ``bank_labels``):
    ``weighted`` (each neighbour votes ``exp(similarity / temperature)``) or ``majority`` (one vote each)."""
    if vote not in KNN_VOTES:
        raise ValueError(f"unknown k-NN vote {vote!r}; choose one of {', '.join(KNN_VOTES)}")
    if not 1 <= k <= len(bank):
        raise ValueError(f"k-NN with k={k} needs 1 <= k <= the memory bank's {len(bank)} images")
    bank, labels = F.normalize(bank.float(), dim=1), bank_labels.long()
    predictions = []
    for chunk in F.normalize(queries.float(), dim=1).split(_QUERY_CHUNK):
        similarity, neighbours = (chunk @ bank.T).topk(k, dim=1)
        weights = (similarity / temperature).exp() if vote == "weighted" else torch.ones_like(similarity)
        votes = torch.zeros(len(chunk), num_classes).scatter_add_(1, labels[neighbours], weights)
        predictions.append(votes.argmax(1))  # the first maximum: the lower class index wins a tie
    return torch.cat(predictions) if predictions else torch.empty(0, dtype=torch.long)
