"""Model registry: ``name -> builder(num_classes) -> nn.Module``, and ``create_model``.

Each family adapter (``models/families.py``) registers its names here. ``timm/<name>`` is resolved
dynamically so every timm model is available without listing them.
"""
from __future__ import annotations

import difflib
from typing import Callable

import torch.nn as nn

from .stem import adapt_stem

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


# The families whose builders take the input channel count (``--in_chans``), under their keyword; the others
# are built for RGB and get their stem rebuilt (models.stem.adapt_stem).
IN_CHANS_KWARGS: dict[str, str] = {"timm": "in_chans", "efficientnet-pytorch": "in_channels", "playground": "in_chans"}


def build_model(name: str, num_classes: int, drop_rate: float | None = None,
                drop_path_rate: float | None = None, in_chans: int = 3) -> nn.Module:
    """Instantiate ``name`` with a fresh head of ``num_classes`` outputs and random weights, reading
    ``in_chans`` input channels (the family's own keyword, else :func:`models.stem.adapt_stem`).

    ``drop_rate`` / ``drop_path_rate`` (None: the model's own) go to the family's keyword for them; a model
    without one is a ValueError naming the flag.
    """
    check_model_name(name)
    family = model_family(name)
    model = _build(name, family, num_classes, drop_rate, drop_path_rate,
                   {IN_CHANS_KWARGS[family]: in_chans} if in_chans != 3 and family in IN_CHANS_KWARGS else {})
    return model if family in IN_CHANS_KWARGS else adapt_stem(model, in_chans, name)


def _build(name: str, family: str, num_classes: int, drop_rate: float | None, drop_path_rate: float | None,
           extra: dict[str, int]) -> nn.Module:
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
            return timm.create_model(name[len(TIMM_PREFIX):], pretrained=False, num_classes=num_classes, **kwargs,
                                     **extra)
        return _REGISTRY[name](num_classes, **kwargs, **extra)
    except TypeError as e:
        if not kwargs:
            raise
        flags = ", ".join(f"--{f}" for f in ("drop_rate", "drop_path_rate") if DROP_KWARGS[family].get(f) in kwargs)
        raise ValueError(f"{flags}: {name} does not take them ({e}); drop the flag") from None
