"""The layer a CAM-family heatmap explains: a default per model family, and resolving ``--target_layer``.

Grad-CAM and its relatives read the activations (and gradients) of one layer: by default the last
convolutional stage, whose maps are the most semantic that still keep a spatial layout. Each family
names that stage differently, so each has a rule here: a function of the model that returns the
stage's dotted module name, or None when the model is not shaped the way the rule expects.
"""
from __future__ import annotations

import difflib
import logging
import re
from typing import Callable, Sequence

import torch
import torch.nn as nn

from .registry import model_family
from .stem import input_channels

logger = logging.getLogger(__name__)

Rule = Callable[[nn.Module], "str | None"]


def _has(model: nn.Module, name: str) -> bool:
    try:
        model.get_submodule(name)
    except AttributeError:
        return False
    return True


def _first_attribute(*names: str) -> Rule:
    """A rule returning the first of ``names`` that the model has."""
    def rule(model: nn.Module) -> str | None:
        return next((n for n in names if _has(model, n)), None)
    return rule


def _timm_feature_info(model: nn.Module) -> str | None:
    """timm models describe their stages in ``feature_info``; the last one is the deepest stage."""
    info = getattr(model, "feature_info", None)
    if not info:
        return None
    last = info[-1] if isinstance(info, (list, tuple)) else None
    name = last.get("module") if isinstance(last, dict) else None
    if not name:
        return None
    for candidate in (name, name.replace("_", ".")):  # a few timm models flatten dots to underscores
        if _has(model, candidate):
            return candidate
    return None


# torchvision's classifiers, in order of precedence: resnets/resnexts/wide resnets (layer4), shufflenets
# (conv5), regnets (trunk_output), inception_v3 (Mixed_7c), googlenet (inception5b), mnasnets (layers),
# mobilenets, efficientnets, densenets, convnexts, vgg, alexnet, squeezenets (features).
_TORCHVISION = _first_attribute("layer4", "conv5", "trunk_output", "Mixed_7c", "inception5b", "layers", "features")

DEFAULT_LAYER_RULES: dict[str, Rule] = {
    "torchvision": _TORCHVISION,
    # efficientnet-pytorch: the head's batch norm (_conv_head -> _bn1 -> swish -> pool); the swish module
    # itself is shared with the stem, so it is called twice per forward and cannot be hooked reliably.
    "efficientnet-pytorch": _first_attribute("_bn1", "_conv_head"),
    "resnest": _first_attribute("layer4"),
    "timm": _timm_feature_info,
}


def target_layer_names(model: nn.Module) -> list[str]:
    """Every valid ``--target_layer``: the dotted names of the model's submodules, in definition order."""
    return [name for name, _ in model.named_modules() if name]


def _last_conv(model: nn.Module) -> str | None:
    names = [name for name, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    return names[-1] if names else None


def default_target_layer(model: nn.Module, arch: str | None = None) -> str:
    """The dotted name of ``model``'s last convolutional stage, by the rule of ``arch``'s family.

    Without ``arch`` (or when the family's rule does not fit the model) every family rule is tried,
    then the last ``nn.Conv2d``. Raises ValueError when the model has no convolution at all.
    """
    family = model_family(arch) if arch else None
    rules = [DEFAULT_LAYER_RULES[family]] if family in DEFAULT_LAYER_RULES else []
    rules += [r for f, r in DEFAULT_LAYER_RULES.items() if f != family] + [_last_conv]
    for rule in rules:
        name = rule(model)
        if name:
            if family and rule is not rules[0]:
                logger.info("no %s rule fits %s: explaining layer %r", family, arch, name)
            return name
    raise ValueError(f"no convolutional layer found in {arch or type(model).__name__}; pass --target_layer NAME "
                     f"(one of: {_short_list(target_layer_names(model))})")


MIN_MAP_SIDE = 4  # a smaller map (1 x 1 for resnet18's layer4 on 32 px inputs) gives a blank, uniform heatmap


def stage_candidates(model: nn.Module, default: str) -> list[str]:
    """The stages up to ``default``, in forward order: the modules before it under the same parent, with
    the blocks of a ModuleList before it (never called itself) and of ``default`` itself when it is a
    container (``features``, ``layers``, ``trunk_output``), ending with ``default``."""
    parent_name, _, _ = default.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    names = []
    for child_name, child in parent.named_children():
        full = f"{parent_name}.{child_name}" if parent_name else child_name
        if isinstance(child, nn.ModuleList) or (full == default and isinstance(child, nn.Sequential)):
            names += [f"{full}.{n}" for n, _ in child.named_children()]
        if not isinstance(child, nn.ModuleList):
            names.append(full)
        if full == default:
            break
    return names


@torch.no_grad()
def map_sizes(model: nn.Module, names: Sequence[str], input_size: Sequence[int]) -> dict[str, tuple[int, int]]:
    """The spatial size of each named module's output for one ``input_size`` image; modules called more
    than once per forward (shared activations, which cannot be hooked reliably) are left out."""
    sizes: dict[str, list[tuple[int, int]]] = {n: [] for n in names}

    def record(name: str) -> Callable:
        def hook(module: nn.Module, args: tuple, output: object) -> None:
            if isinstance(output, torch.Tensor) and output.dim() == 4:
                sizes[name].append(tuple(output.shape[-2:]))
        return hook

    handles = [model.get_submodule(n).register_forward_hook(record(n)) for n in names]
    training = model.training
    try:
        parameter = next(model.parameters(), None)
        device = parameter.device if parameter is not None else torch.device("cpu")
        model.eval()(torch.zeros(1, input_channels(model), *input_size, device=device))
    finally:
        model.train(training)
        for handle in handles:
            handle.remove()
    return {n: s[0] for n, s in sizes.items() if len(s) == 1}


def spatial_target_layer(model: nn.Module, arch: str | None, input_size: Sequence[int],
                         min_side: int = MIN_MAP_SIDE) -> str:
    """The default target layer at ``input_size``: the family's last stage, or, when its maps are smaller
    than ``min_side`` a side there, the last earlier stage whose maps are not (said in the log)."""
    default = default_target_layer(model, arch)
    candidates = stage_candidates(model, default)
    sizes = map_sizes(model, candidates, input_size)
    if default not in sizes or min(sizes[default]) >= min_side:
        return default
    fitting = [n for n in candidates if n in sizes and min(sizes[n]) >= min_side]
    size = "x".join(map(str, input_size))
    if not fitting:
        logger.warning("every stage of %s is smaller than %d x %d at input size %s: explaining %r (%s maps)",
                       arch or type(model).__name__, min_side, min_side, size, default,
                       " x ".join(map(str, sizes[default])))
        return default
    chosen = fitting[-1]
    logger.info("target layer %r (%s maps at input size %s): the family's last stage %r gives %s maps, too "
                "small to show where the model looks; --target_layer picks another", chosen,
                " x ".join(map(str, sizes[chosen])), size, default, " x ".join(map(str, sizes[default])))
    return chosen


def _short_list(names: list[str], limit: int = 60) -> str:
    """All names when few; else the shallowest levels that fit ``limit`` (the stages are the useful choices)."""
    if not names:
        return "none"
    if len(names) <= limit:
        return ", ".join(names)
    depth = 0
    while sum(n.count(".") <= depth + 1 for n in names) <= limit:
        depth += 1
    shown = [n for n in names if n.count(".") <= depth][:limit]
    return ", ".join(shown) + f", ... and {len(names) - len(shown)} deeper ones (print(model) shows them all)"


def resolve_target_layer(model: nn.Module, name: str) -> nn.Module:
    """The submodule called ``name`` (dotted, ``features.8``; ``features[8]`` is accepted too).

    An unknown name is a ValueError listing the close matches first, then the valid names.
    """
    dotted = re.sub(r"\[(\d+)\]", r".\1", name.strip()).strip(".")
    if dotted:
        try:
            return model.get_submodule(dotted)
        except AttributeError:
            pass
    names = target_layer_names(model)
    close = difflib.get_close_matches(dotted, names, n=5, cutoff=0.5)
    hint = f" Close matches: {', '.join(close)}." if close else ""
    raise ValueError(f"unknown --target_layer {name!r} for {type(model).__name__}.{hint} "
                     f"Valid names ({len(names)}): {_short_list(names)}")
