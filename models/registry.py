"""Model registry: ``name -> builder(num_classes) -> nn.Module``, and ``create_model``.

Each family adapter (``models/families.py``) registers its names here. ``timm/<name>`` is resolved
dynamically so every timm model is available without listing them.
"""
from __future__ import annotations

import difflib
from typing import Callable

import torch.nn as nn

Builder = Callable[..., nn.Module]  # builder(num_classes, **regularisation kwargs of its family)
_REGISTRY: dict[str, Builder] = {}
_FAMILY: dict[str, str] = {}
TIMM_PREFIX = "timm/"


def register_model(name: str, family: str) -> Callable[[Builder], Builder]:
    """Decorator: register ``builder(num_classes)`` under ``name``."""
    def wrap(builder: Builder) -> Builder:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is registered twice")
        _REGISTRY[name] = builder
        _FAMILY[name] = family
        return builder
    return wrap


def list_models() -> list[str]:
    """Every registered name (timm models are reachable as ``timm/<name>`` in addition)."""
    return sorted(_REGISTRY)


def model_family(name: str) -> str:
    """``torchvision``, ``efficientnet-pytorch``, ``resnest`` or ``timm``."""
    if name.startswith(TIMM_PREFIX):
        return "timm"
    check_model_name(name)
    return _FAMILY[name]


def _timm_names() -> list[str]:
    import timm
    return timm.list_models()


def check_model_name(name: str) -> None:
    """Raise ValueError (with close matches) unless ``name`` is a model ``create_model`` can build."""
    if name in _REGISTRY:
        return
    if name.startswith(TIMM_PREFIX):
        timm_name = name[len(TIMM_PREFIX):]
        import timm
        if timm.is_model(timm_name):
            return
        close = difflib.get_close_matches(timm_name, _timm_names(), n=5, cutoff=0.6)
        hint = f" Close matches: {', '.join(TIMM_PREFIX + c for c in close)}." if close else ""
        raise ValueError(f"unknown timm model {timm_name!r}.{hint}")
    close = difflib.get_close_matches(name, list(_REGISTRY), n=5, cutoff=0.6)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    raise ValueError(
        f"unknown model {name!r}.{hint} Valid names: torchvision names (resnet18, resnext50_32x4d, ...), "
        f"efficientnet-b0..b7, resnest50/101/200/269, or timm/<name>; see models.list_models().")


# ``drop_rate`` (dropout before the classifier) and ``drop_path_rate`` (stochastic depth) under each
# family's own keyword; a family missing one does not support it.
DROP_KWARGS: dict[str, dict[str, str]] = {
    "timm": {"drop_rate": "drop_rate", "drop_path_rate": "drop_path_rate"},
    "torchvision": {"drop_rate": "dropout", "drop_path_rate": "stochastic_depth_prob"},
    "efficientnet-pytorch": {"drop_rate": "dropout_rate", "drop_path_rate": "drop_connect_rate"},
    "resnest": {"drop_rate": "final_drop"},
}


def build_model(name: str, num_classes: int, drop_rate: float | None = None,
                drop_path_rate: float | None = None) -> nn.Module:
    """Instantiate ``name`` with a fresh head of ``num_classes`` outputs and random weights.

    ``drop_rate`` / ``drop_path_rate`` (None: the model's own) go to the family's keyword for them; a model
    without one is a ValueError naming the flag.
    """
    check_model_name(name)
    family = model_family(name)
    kwargs = {}
    for flag, value in (("drop_rate", drop_rate), ("drop_path_rate", drop_path_rate)):
        if value is None:
            continue
        key = DROP_KWARGS.get(family, {}).get(flag)
        if key is None:
            raise ValueError(f"--{flag}: {name} ({family}) has no such setting; drop the flag")
        kwargs[key] = value
    try:
        if name.startswith(TIMM_PREFIX):
            import timm
            return timm.create_model(name[len(TIMM_PREFIX):], pretrained=False, num_classes=num_classes, **kwargs)
        return _REGISTRY[name](num_classes, **kwargs)
    except TypeError as e:
        if not kwargs:
            raise
        flags = ", ".join(f"--{f}" for f in ("drop_rate", "drop_path_rate") if DROP_KWARGS[family].get(f) in kwargs)
        raise ValueError(f"{flags}: {name} does not take them ({e}); drop the flag") from None
