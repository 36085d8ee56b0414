"""Hub packages: a folder that ``timm.create_model('local-dir:DIR', pretrained=True)`` loads, and that
``--pretrained local-dir:DIR`` / ``hf-hub:REPO`` fine-tune from.

A package is three files, as timm's ``push_to_hf_hub`` writes them:

- ``model.safetensors``: the model's state dict (safetensors: opening it runs no code);
- ``config.json``: timm's form, read by ``timm.models._hub.load_model_config_from_path`` (``_parse_model_cfg``):
  top-level ``architecture`` (the timm model name), ``num_classes``, ``label_names`` and a ``pretrained_cfg``
  whose keys are timm's ``PretrainedCfg`` fields (``input_size`` as C, H, W, ``mean``, ``std``, ``interpolation``,
  ``crop_pct``, ``crop_mode``, ``num_classes``, ``first_conv``, ``classifier``; ``test_input_size`` and
  ``test_crop_pct`` where the model records them). timm ignores other top-level keys: ours are ``model_spec``
  (the model's :class:`~models.spec.ModelSpec`, which our loader reads back exactly) and ``timm_loadable`` with
  a ``note``;
- ``README.md``: the model card (written by the application).

Whether timm can build the model is not assumed but checked when the package is written
(:func:`timm_check`): timm loads the written folder and its logits must equal ours. Our timm family passes by
construction; torchvision models whose names and state-dict keys are timm's (the resnets: ``resnet18``...) pass
when their outputs agree too; the others (torchvision's mobilenets, efficientnet-pytorch, resnest, ours) get
an ``architecture`` that timm refuses by name (``torchvision/mobilenet_v3_small``) and a note: they load with
:func:`load_package`.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from utils.checkpoint import CheckpointError

from .registry import TIMM_PREFIX, build_model, model_family
from .spec import ModelSpec

logger = logging.getLogger(__name__)

WEIGHTS_FILE, CONFIG_FILE, CARD_FILE = "model.safetensors", "config.json", "README.md"
PACKAGE_FILES = (WEIGHTS_FILE, CONFIG_FILE, CARD_FILE)
LOGIT_TOLERANCE = 1e-5  # timm's logits of the package vs ours (the same operations: equal but for summation order)
# timm's PretrainedCfg fields kept from the architecture's default config: how timm finds the stem and the head
_TIMM_LAYOUT_KEYS = ("first_conv", "classifier", "fixed_input_size")
# timm's crop modes <-> our --eval_resize: timm's 'border' is our letterbox (resize the longer side, pad)
_CROP_MODES = {"center_crop": "center", "letterbox": "border"}
RGB_MEAN, RGB_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # timm's defaults where a config has none


def timm_candidate(arch: str) -> str | None:
    """The timm model that may be ``arch``: our timm family's own name (tag dropped), a torchvision model of a
    name timm also has (checked by :func:`timm_check`), else None."""
    import timm
    if arch.startswith(TIMM_PREFIX):
        return arch[len(TIMM_PREFIX):].partition(".")[0]
    if model_family(arch) == "torchvision" and timm.is_model(arch):
        return arch
    return None


def pretrained_cfg(spec: ModelSpec, architecture: str | None) -> dict[str, Any]:
    """timm's ``pretrained_cfg`` of the model: the architecture's layout keys, our preprocessing and classes."""
    base: dict[str, Any] = {}
    if architecture is not None:
        from timm.models import get_pretrained_cfg
        default = get_pretrained_cfg(architecture)
        if default is not None:
            base = {k: getattr(default, k) for k in _TIMM_LAYOUT_KEYS if getattr(default, k, None) is not None}
    crop_pct = spec.crop_pct if spec.eval_resize == "center_crop" else 1.0
    cfg = {**base, "input_size": [spec.in_chans, *spec.image_size], "interpolation": spec.interpolation,
           "mean": list(spec.mean), "std": list(spec.std), "crop_pct": crop_pct,
           "crop_mode": _CROP_MODES[spec.eval_resize], "num_classes": spec.num_classes}
    if spec.test_image_size is not None:
        cfg["test_input_size"] = [spec.in_chans, *spec.test_image_size]
    if spec.test_crop_pct is not None:
        cfg["test_crop_pct"] = spec.test_crop_pct
    return cfg


def package_config(spec: ModelSpec, architecture: str | None, note: str = "") -> dict[str, Any]:
    """config.json: timm's fields (``architecture`` is None when timm cannot build the model: then a name timm
    refuses, ``<family>/<arch>``), our spec, whether timm loads it and why not."""
    return {"architecture": architecture or f"{model_family(spec.arch)}/{spec.arch}",
            "num_classes": spec.num_classes, "label_names": list(spec.class_names),
            "pretrained_cfg": pretrained_cfg(spec, architecture),
            "model_spec": spec.to_dict(), "timm_loadable": architecture is not None,
            **({"note": note} if note else {})}


def timm_check(folder: Path, model: nn.Module, spec: ModelSpec) -> str:
    """Load ``folder`` as timm does (``local-dir:``) and compare its logits with ``model``'s on a fixed random
    batch; '' when they agree within ``LOGIT_TOLERANCE``, else why not (for the note)."""
    import timm
    torch.manual_seed(0)
    x = torch.randn(2, spec.in_chans, *spec.image_size)
    try:
        theirs = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
    except Exception as e:  # timm's build or its strict load_state_dict: the keys or shapes are not timm's
        message = " ".join(str(e).split())
        return f"timm cannot load it ({type(e).__name__}: {message[:300]})"
    with torch.no_grad():
        ours, got = model.eval()(x), theirs(x)
    if got.shape != ours.shape:
        return f"timm's model gives outputs of shape {tuple(got.shape)}, ours {tuple(ours.shape)}"
    diff = (got - ours).abs().max().item()
    if diff > LOGIT_TOLERANCE * max(1.0, ours.abs().max().item()):
        return f"timm's model computes other logits (max difference {diff:.3g}): another forward pass"
    return ""


def read_package_config(folder: str | Path) -> dict[str, Any]:
    """The package's config.json; a missing or unreadable one is a CheckpointError naming it."""
    path = Path(folder) / CONFIG_FILE
    if not path.is_file():
        raise CheckpointError(f"{path} does not exist: {folder} is not a package (--package writes "
                              f"{', '.join(PACKAGE_FILES)})")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path} is not valid JSON ({e}); write the package again with --package") from None
    if not isinstance(config, dict) or not isinstance(config.get("pretrained_cfg", {}), dict):
        raise CheckpointError(f"{path} is not a timm config.json (no pretrained_cfg object)")
    return config


def package_spec(config: dict[str, Any], source: str) -> ModelSpec:
    """The model spec a package describes: ours (``model_spec``) exactly; a timm package's (no ``model_spec``)
    built from its ``architecture``, ``label_names`` and ``pretrained_cfg`` as our timm family's model. A
    config.json of wrong fields or values (an untrusted file) is a CheckpointError naming it, not a TypeError."""
    ours = isinstance(config.get("model_spec"), dict)
    try:
        return ModelSpec.from_dict(config["model_spec"]) if ours else _timm_spec(config, source)
    except CheckpointError:
        raise
    except (TypeError, ValueError, KeyError, AttributeError) as e:
        what = ("its model_spec is not the one --package writes" if ours else
                "its pretrained_cfg is not timm's form (input_size [C, H, W], mean and std lists, crop_pct a number)")
        raise CheckpointError(f"{source}: {CONFIG_FILE}: {what} ({type(e).__name__}: {e}); write the package again "
                              f"with --package, or correct {CONFIG_FILE}") from None


def _timm_spec(config: dict[str, Any], source: str) -> ModelSpec:
    """:func:`package_spec` of a config.json without ``model_spec``: timm's fields."""
    cfg = config.get("pretrained_cfg", {})
    if not isinstance(config.get("architecture"), str) or "input_size" not in cfg:
        raise CheckpointError(f"{source}: {CONFIG_FILE} names no architecture or input_size")
    num_classes = int(config.get("num_classes", cfg.get("num_classes", 0)))
    names = config.get("label_names") or cfg.get("label_names") or [str(i) for i in range(num_classes)]
    if isinstance(names, dict):  # timm allows {index: name} where indices have gaps
        names = [str(names.get(str(i), names.get(i, i))) for i in range(num_classes)]
    channels, height, width = cfg["input_size"]
    crop = {v: k for k, v in _CROP_MODES.items()}.get(cfg.get("crop_mode", "center"), "center_crop")
    test = cfg.get("test_input_size")
    return ModelSpec(arch=TIMM_PREFIX + config["architecture"], class_names=tuple(names), image_size=(height, width),
                     mean=tuple(cfg.get("mean", RGB_MEAN)), std=tuple(cfg.get("std", RGB_STD)),
                     eval_resize=crop, crop_pct=float(cfg.get("crop_pct", 0.875)), in_chans=int(channels),
                     interpolation=str(cfg.get("interpolation", "bilinear")),
                     test_image_size=tuple(test[-2:]) if test else None, test_crop_pct=cfg.get("test_crop_pct"))


def package_preprocessing(spec: ModelSpec) -> dict[str, Any]:
    """A package's preprocessing as ``models.hub.NamedWeights.preprocessing`` holds named weights': its model's
    own mean/std, resize, crop, interpolation, training size and test size."""
    return {"mean": list(spec.mean), "std": list(spec.std), "interpolation": spec.interpolation,
            "eval_resize": spec.eval_resize, "crop_pct": spec.crop_pct, "image_size": list(spec.image_size),
            "test_image_size": list(spec.test_image_size) if spec.test_image_size else None,
            "test_crop_pct": spec.test_crop_pct}


def package_model(folder: str | Path,
                  state: dict[str, torch.Tensor] | None = None) -> tuple[nn.Module, ModelSpec]:
    """The model a package's config.json describes, with ``state`` (default: the package's own weights, read
    with safetensors) loaded strictly: a file that does not fit is a CheckpointError naming it."""
    from .pretrained import load_state_dict_checked, read_weights
    folder = Path(folder)
    spec = package_spec(read_package_config(folder), str(folder))
    model = build_model(spec.arch, spec.num_classes, in_chans=spec.in_chans)
    load_state_dict_checked(model, read_weights(folder / WEIGHTS_FILE) if state is None else state,
                            folder / WEIGHTS_FILE)
    return model, spec


def load_package(folder: str | Path) -> tuple[nn.Module, ModelSpec]:
    """Our loader, for every package (those timm cannot build too): the spec's model, its weights read with
    safetensors and loaded strictly, in eval mode."""
    model, spec = package_model(folder)
    return model.eval(), spec
