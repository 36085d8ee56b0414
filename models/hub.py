"""Pretrained weights by name, fetched by each library's own downloader into its own cache, read by ours.

``--pretrained imagenet`` (or a torchvision weights name such as ``IMAGENET1K_V2``) resolves, with no
network and no loading, to a :class:`NamedWeights`: which weights, their URL, the exact file the library
reads from its cache, and the preprocessing they were trained with. :func:`fetch_weights` makes sure the
file is there (the library's downloader with its progress bar and hash check fills the cache when the
network is up) and otherwise stops with one message naming the URL, the cache path and ``--pretrained PATH``.
:func:`pretrained_state` then reads the cached file with the project's safe reader
(``models.pretrained.read_weights``: ``torch.load(weights_only=True)``, safetensors for timm), never with
the library's loader (torch.hub's unpickles with ``weights_only=False``: a tampered cache file would run
code), and loads it into the library's ImageNet model built without weights, with the key fixes and
filters of the library's own pretrained path; it returns that model's state dict. A cache file that
cannot be read or does not fit is one CheckpointError naming it: delete it, or pass ``--pretrained PATH``.

Caches: torchvision, efficientnet-pytorch and resnest download with torch.hub, where their
``load_state_dict_from_url`` looks (``$TORCH_HOME/hub/checkpoints/<file name of the URL>``); timm uses the Hugging
Face hub cache (``$HF_HOME/hub/models--timm--<name>/snapshots/<revision>/model.safetensors``).
``HF_HUB_OFFLINE=1`` means offline for every family, exactly as an unreachable network does.
"""
from __future__ import annotations

import logging
import os
import re
import socket
import urllib.parse
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn as nn

from utils.checkpoint import CheckpointError
from utils.weights_name import WEIGHTS_DEFAULT as DEFAULT_NAME  # noqa: F401 (re-exported)
from utils.weights_name import (
    is_package_ref,
    is_weights_name,  # noqa: F401 (re-exported)
)

from .pretrained import read_weights
from .registry import TIMM_PREFIX, model_family

logger = logging.getLogger(__name__)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
PROBE_TIMEOUT_S = 5.0


class WeightsUnavailable(FileNotFoundError):
    """Named weights are neither in the cache nor downloadable (offline, or the download failed)."""


@dataclass(frozen=True)
class NamedWeights:
    """Pretrained weights of one model by name, resolved without network access."""
    arch: str
    name: str                      # e.g. ResNet18_Weights.IMAGENET1K_V1, timm/resnet10t.c3_in1k
    url: str
    cache_path: Path               # the file the library reads (for timm: the snapshot of refs/main)
    # mean, std, interpolation, eval_resize, crop_pct (the weights' own); timm's also image_size (their training
    # size), test_image_size and test_crop_pct (their evaluation size, None where their config has none)
    preprocessing: dict[str, Any]
    source: str                    # where the preprocessing was taken from, for the log
    # the library's ImageNet model built without weights, with a state dict (read by us) loaded as the
    # library's own pretrained path loads its file: its key fixes, filters and strictness
    load: Callable[[dict[str, torch.Tensor]], nn.Module] = field(repr=False, compare=False)
    download: Callable[[], None] = field(repr=False, compare=False)    # the library's downloader
    cache_hint: str = ""           # how to place the file by hand when the path needs more than a copy
    # where the file is now, when that can change: timm's snapshot folder is named by the revision that
    # refs/main holds, which the first download writes (before it, cache_path says snapshots/main)
    locate: Callable[[], Path] | None = field(default=None, repr=False, compare=False)
    # a package's head is kept where it fits (the same class count), as timm's hf-hub: models; the libraries'
    # ImageNet heads never are
    keep_head: bool = False

    def cached_file(self) -> Path:
        """The file the library's cache holds for these weights now (``cache_path`` unless ``locate``)."""
        return self.locate() if self.locate is not None else self.cache_path


def resolve_weights(arch: str, spec: str) -> NamedWeights:
    """The weights ``spec`` names for ``arch``; an unknown name is a ValueError listing the valid ones. A
    package (``hf-hub:REPO``, ``local-dir:DIR``) is any family's; its preprocessing is known once its config.json
    is there (for ``hf-hub:``, in the cache: resolve again after :func:`fetch_weights`)."""
    if is_package_ref(spec):
        return _package(arch, spec)
    family = model_family(arch)
    if family not in _RESOLVERS:
        raise ValueError(f"--pretrained: {arch} ({family}) has no named weights; give a local file")
    return _RESOLVERS[family](arch, spec)


def is_cached(weights: NamedWeights) -> bool:
    """The weights file is in the library's cache."""
    return weights.cached_file().is_file()


def offline() -> bool:
    """``HF_HUB_OFFLINE`` is set to a true value (read now, so a test or a shell may set it late)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "on", "yes", "true")


def reachable(url: str, timeout: float = PROBE_TIMEOUT_S) -> bool:
    """A TCP connection to ``url``'s host opens within ``timeout`` seconds (no request is sent).

    The libraries' own downloaders have no timeout (torch.hub) or retry for about 25 s (huggingface_hub):
    this probe lets a machine without network fail at once with the same message as ``HF_HUB_OFFLINE=1``.
    """
    parts = urllib.parse.urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        with socket.create_connection((parts.hostname, port), timeout=timeout):
            return True
    except OSError:
        return False


def unavailable_message(weights: NamedWeights, why: str) -> str:
    """One message: which weights, the URL, the exact cache path, and ``--pretrained PATH`` instead."""
    hint = f" ({weights.cache_hint})" if weights.cache_hint else ""
    return (f"--pretrained: the {weights.name} weights for {weights.arch} are not cached and {why}; "
            f"download {weights.url} and put it at {weights.cache_path}{hint}, "
            f"or pass a local file with --pretrained PATH")


def fetch_weights(weights: NamedWeights) -> str:
    """Make sure ``weights`` is in the cache: nothing to do when it is; else the library downloads it,
    unless offline (``HF_HUB_OFFLINE=1``) or the host cannot be reached, which raise WeightsUnavailable.
    Returns where the file is, as a line for the run's log."""
    if is_cached(weights):
        return f"cached at {weights.cached_file()}"
    if offline():
        raise WeightsUnavailable(unavailable_message(weights, "HF_HUB_OFFLINE=1 forbids downloads"))
    if not reachable(weights.url):
        raise WeightsUnavailable(unavailable_message(
            weights, f"{urllib.parse.urlsplit(weights.url).hostname} cannot be reached (no network?)"))
    logger.info("pretrained %s: downloading %s into %s", weights.name, weights.url, weights.cache_path)
    try:
        weights.download()
    except Exception as e:  # the libraries raise URLError, HTTPError, requests' and huggingface_hub's errors
        raise WeightsUnavailable(unavailable_message(weights, f"the download failed ({type(e).__name__}: {e})"))
    if not is_cached(weights):
        raise WeightsUnavailable(unavailable_message(weights, "the download left no file there"))
    return f"downloaded to {weights.cached_file()}"


def pretrained_state(weights: NamedWeights) -> dict[str, torch.Tensor]:
    """The state dict of the library's pretrained ImageNet model (:func:`pretrained_model`)."""
    return pretrained_model(weights).state_dict()


def pretrained_model(weights: NamedWeights) -> nn.Module:
    """The library's pretrained ImageNet model, its weights from the cached file read by our safe reader (no
    network, no unpickled code); a file that cannot be read or does not fit the library's model is a
    CheckpointError naming it, to delete or replace with ``--pretrained PATH``."""
    fetch_weights(weights)
    try:
        return weights.load(read_weights(weights.cached_file()))
    except CheckpointError as e:
        path = weights.cached_file()
        target = path.resolve()  # the Hugging Face cache links snapshots/<rev>/<file> to blobs/<hash>
        files = f"{path} and {target}, the file it links to" if path.is_symlink() else str(path)
        raise CheckpointError(
            f"--pretrained: the cached {weights.name} weights cannot be used: {str(e).rstrip('.')}. Delete "
            f"{files} (a broken or tampered download; it is fetched again when online), or pass a local file "
            f"with --pretrained PATH") from None


def _fits(model: nn.Module, state: dict[str, torch.Tensor], source: Path) -> nn.Module:
    """``model`` with ``state`` loaded as the libraries load their files: a strict ``load_state_dict`` with
    the file's own module versions (``_metadata``; without them, as the old files have none, batch norms
    take a file without ``num_batches_tracked``). A key that does not fit is a CheckpointError."""
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise _does_not_fit(source, type(model).__name__, e) from None
    return model


def _does_not_fit(source: Path, model: str, e: Exception) -> CheckpointError:
    """One line from a library's load error (torch's lists every bad key on lines of its own)."""
    message = " ".join(str(e).split())
    cut = 600
    return CheckpointError(f"{source} does not fit the library's {model} ({type(e).__name__}: "
                           f"{message[:cut]}{' ...' if len(message) > cut else ''})")


# ---- torchvision -------------------------------------------------------------------------------------

def _torch_hub_file(url: str) -> Path:
    """Where ``torch.hub.load_state_dict_from_url`` keeps ``url``: ``$TORCH_HOME/hub/checkpoints/<name>``."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urllib.parse.urlparse(url).path)


def _torch_hub_download(url: str) -> Callable[[], None]:
    """torch.hub's downloader into its cache, checking the hash prefix in the file name as the libraries do."""
    def download() -> None:
        target = _torch_hub_file(url)
        target.parent.mkdir(parents=True, exist_ok=True)
        match = torch.hub.HASH_REGEX.search(target.name)
        torch.hub.download_url_to_file(url, str(target), match.group(1) if match else None, progress=True)
    return download


def _torchvision(arch: str, spec: str) -> NamedWeights:
    import torchvision
    enum = torchvision.models.get_model_weights(arch)
    valid = [w.name for w in enum]
    if spec.lower() == DEFAULT_NAME:
        w = enum.DEFAULT
    elif spec in valid:
        w = enum[spec]
    else:
        raise ValueError(f"--pretrained: {arch} has no weights {spec!r}; choose {DEFAULT_NAME} (= {enum.DEFAULT.name}) "
                         f"or one of {', '.join(valid)}, or give a local file")
    t = w.transforms()
    crop, resize = list(t.crop_size), list(t.resize_size)
    pre = {"mean": list(t.mean), "std": list(t.std), "interpolation": t.interpolation.value,
           "eval_resize": "center_crop", "crop_pct": round(crop[0] / resize[0], 4)}
    path = _torch_hub_file(w.url)
    return NamedWeights(arch, f"{type(w).__name__}.{w.name}", w.url, path, pre,
                        f"torchvision {type(w).__name__}.{w.name}.transforms()",
                        load=lambda state: _torchvision_load(arch, w, state, path), download=_torch_hub_download(w.url))


# What torchvision's builders do with weights besides reading the file (torchvision/models/*.py): the
# weights' class count and resolution; the auxiliary heads the files hold, built and loaded, then dropped
# (our models have none: models.families); densenet's old '.'-separated key names, renamed as its
# ``_load_state_dict`` does.
_TORCHVISION_AUX = {"inception_v3": ("AuxLogits",), "googlenet": ("aux1", "aux2")}
_DENSENET_OLD_KEY = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$")


def _torchvision_load(arch: str, w: Any, state: dict[str, torch.Tensor], source: Path) -> nn.Module:
    """``torchvision.models.get_model(arch, weights=w, aux_logits=False)`` with ``state`` as the weights' file."""
    import torchvision
    kwargs: dict[str, Any] = {"num_classes": len(w.meta["categories"])}
    if arch in _TORCHVISION_AUX:
        kwargs.update(aux_logits=True, init_weights=False)
    if arch.startswith("vit_"):  # the weights' resolution sizes the position embedding
        kwargs["image_size"] = w.meta["min_size"][0]
    if arch.startswith("maxvit"):
        kwargs["input_size"] = w.meta["min_size"]
    if arch.startswith("densenet"):
        metadata = getattr(state, "_metadata", None)
        state = OrderedDict((_densenet_key(k), v) for k, v in state.items())
        if metadata is not None:
            state._metadata = metadata  # type: ignore[attr-defined]
    model = _fits(torchvision.models.get_model(arch, weights=None, **kwargs), state, source)
    if arch in _TORCHVISION_AUX:
        model.aux_logits = False
        for name in _TORCHVISION_AUX[arch]:
            setattr(model, name, None)
    return model


def _densenet_key(key: str) -> str:
    match = _DENSENET_OLD_KEY.match(key)
    return match.group(1) + match.group(2) if match else key


# ---- efficientnet-pytorch ----------------------------------------------------------------------------

def _efficientnet_pytorch(arch: str, spec: str) -> NamedWeights:
    from efficientnet_pytorch import EfficientNet
    from efficientnet_pytorch.utils import efficientnet_params, url_map
    if spec.lower() != DEFAULT_NAME:
        raise ValueError(f"--pretrained: efficientnet-pytorch has one set of weights per model; "
                         f"use --pretrained {DEFAULT_NAME}, or give a local file")
    url = url_map[arch]
    # The library ships no preprocessing metadata: its README evaluates with ImageNet mean/std, bicubic
    # resize and a 0.875 centre crop at the model's resolution (as timm's tf_efficientnet_bN).
    pre = {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD), "interpolation": "bicubic",
           "eval_resize": "center_crop", "crop_pct": 0.875}
    resolution = efficientnet_params(arch)[2]
    path = _torch_hub_file(url)
    # EfficientNet.from_pretrained(arch): the 1000-class model, every key of the file loaded (its
    # load_pretrained_weights asserts no missing or unexpected key)
    return NamedWeights(arch, f"{arch} ImageNet", url, path, pre,
                        f"efficientnet-pytorch's README (ImageNet mean/std, bicubic, crop 0.875; trained at "
                        f"{resolution}x{resolution})",
                        load=lambda state: _fits(EfficientNet.from_name(arch), state, path),
                        download=_torch_hub_download(url))


# ---- resnest -----------------------------------------------------------------------------------------

def _resnest(arch: str, spec: str) -> NamedWeights:
    import resnest.torch
    from resnest.torch.resnest import resnest_model_urls
    if spec.lower() != DEFAULT_NAME:
        raise ValueError(f"--pretrained: resnest has one set of weights per model; use --pretrained {DEFAULT_NAME}, "
                         f"or give a local file")
    url = resnest_model_urls[arch]
    pre = {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD), "interpolation": "bilinear",
           "eval_resize": "center_crop", "crop_pct": 0.875}
    path = _torch_hub_file(url)
    # resnest.torch.<arch>(pretrained=True): the model, then a strict load_state_dict of the file
    return NamedWeights(arch, f"{arch} ImageNet", url, path, pre,
                        "resnest's ImageNet recipe (ImageNet mean/std, bilinear, crop 0.875)",
                        load=lambda state: _fits(getattr(resnest.torch, arch)(pretrained=False), state, path),
                        download=_torch_hub_download(url))


# ---- timm (Hugging Face hub) -------------------------------------------------------------------------

HF_FILE = "model.safetensors"


def _hf_cache_file(repo_id: str, filename: str) -> tuple[Path, str]:
    """The snapshot file huggingface_hub reads for ``repo_id`` at ``main``, and how to place one by hand."""
    from huggingface_hub import constants
    hub = Path(os.environ.get("HF_HUB_CACHE") or Path(os.environ.get("HF_HOME") or constants.HF_HOME) / "hub")
    repo = hub / f"models--{repo_id.replace('/', '--')}"
    ref = repo / "refs" / "main"
    revision = ref.read_text().strip() if ref.is_file() else "main"
    hint = "" if ref.is_file() else f"and write the word main into {ref}"
    return repo / "snapshots" / revision / filename, hint


def _timm_test_size(cfg: Any) -> dict[str, Any]:
    """A timm pretrained config's sizes: ``image_size`` (what the weights trained at, H, W), ``test_image_size``
    and ``test_crop_pct`` (their evaluation size and crop fraction, None where the config has none)."""
    test_size, test_crop = getattr(cfg, "test_input_size", None), getattr(cfg, "test_crop_pct", None)
    return {"image_size": list(cfg.input_size[-2:]), "test_image_size": list(test_size[-2:]) if test_size else None,
            "test_crop_pct": float(test_crop) if test_crop else None}


def _timm(arch: str, spec: str) -> NamedWeights:
    import timm
    from timm.models import get_pretrained_cfg
    name = arch[len(TIMM_PREFIX):]
    base, _, tag = name.partition(".")
    if spec.lower() != DEFAULT_NAME:
        if tag:
            raise ValueError(f"--pretrained: {arch} already names its weights ({tag}); use --pretrained {DEFAULT_NAME}")
        name = f"{base}.{spec}"
    tags = timm.list_pretrained(f"{base}.*")
    named = bool(tag) or spec.lower() != DEFAULT_NAME
    cfg = get_pretrained_cfg(name) if tags and (name in tags or not named) else None
    if cfg is None or not getattr(cfg, "hf_hub_id", None):
        raise ValueError(f"--pretrained: timm has no hub weights for {name!r}; "
                         + (f"choose --pretrained {DEFAULT_NAME} or a tag of {', '.join(tags)}" if tags
                            else "this model has no pretrained weights (train it from scratch)"))
    repo_id = cfg.hf_hub_id
    path, hint = _hf_cache_file(repo_id, HF_FILE)
    url = f"https://huggingface.co/{repo_id}/resolve/main/{HF_FILE}"
    pre = {"mean": list(cfg.mean), "std": list(cfg.std), "interpolation": cfg.interpolation,
           "eval_resize": "center_crop" if cfg.crop_mode == "center" else "letterbox", "crop_pct": cfg.crop_pct,
           **_timm_test_size(cfg)}
    full = f"{cfg.architecture}.{cfg.tag}" if cfg.tag else cfg.architecture

    def load(state: dict[str, torch.Tensor]) -> nn.Module:
        """timm's own pretrained path (its filter function for the architecture, label offsets, strictness)
        given the state dict we read, so that timm opens no file and makes no hub request."""
        try:
            return timm.create_model(full, pretrained=True, pretrained_cfg_overlay={
                "state_dict": state, "source": "", "file": None, "custom_load": False})
        except (RuntimeError, KeyError, ValueError, IndexError) as e:  # load_state_dict's, the filters' errors
            raise _does_not_fit(path, f"timm {full}", e) from None

    def download() -> None:
        from huggingface_hub import hf_hub_download
        hf_hub_download(repo_id, HF_FILE)

    return NamedWeights(arch, f"timm/{full}", url, path, pre, f"timm pretrained_cfg of {full}",
                        load=load, download=download, cache_hint=hint,
                        locate=lambda: _hf_cache_file(repo_id, HF_FILE)[0])


# ---- packages (--package's folders: models.package) ---------------------------------------------------

def _package(arch: str, ref: str) -> NamedWeights:
    """``hf-hub:REPO`` (model.safetensors and config.json through huggingface_hub's cache) or ``local-dir:DIR``."""
    from .package import CONFIG_FILE, WEIGHTS_FILE
    source, _, where = ref.partition(":")
    if source == "local-dir":
        folder = Path(where).expanduser()
        missing = [name for name in (WEIGHTS_FILE, CONFIG_FILE) if not (folder / name).is_file()]
        if missing:
            raise ValueError(f"--pretrained {ref}: {folder} holds no package (no {' or '.join(missing)}); write one "
                             f"with --package CKPT {folder}")
        path, url, hint, locate = folder / WEIGHTS_FILE, folder.resolve().as_uri(), "", None

        def download() -> None:
            return None
    else:
        from huggingface_hub import constants
        if not where or where.count("/") > 1:
            raise ValueError(f"--pretrained {ref}: give a Hub repo id, hf-hub:OWNER/NAME")
        path, hint = _hf_cache_file(where, WEIGHTS_FILE)
        hint = f"with its {CONFIG_FILE} beside it" + (f", {hint}" if hint else "")
        url = f"{constants.ENDPOINT}/{where}/resolve/main/{WEIGHTS_FILE}"

        def locate() -> Path:
            return _hf_cache_file(where, WEIGHTS_FILE)[0]

        def download() -> None:
            from huggingface_hub import hf_hub_download
            for name in (CONFIG_FILE, WEIGHTS_FILE):
                hf_hub_download(where, name)
    current = locate() if locate else path
    if current.is_file() and not (current.parent / CONFIG_FILE).is_file():
        raise ValueError(f"--pretrained {ref}: the cache holds {current} but not the package's {CONFIG_FILE} beside "
                         f"it; put the repo's {CONFIG_FILE} there (or delete the file to download both)")
    pre = _package_preprocessing(arch, ref, current.parent) if (current.parent / CONFIG_FILE).is_file() else {}
    return NamedWeights(arch, ref, url, path, pre, f"the package's {CONFIG_FILE}",
                        load=lambda state: _package_model((locate() if locate else path).parent, state),
                        download=download, cache_hint=hint, locate=locate, keep_head=True)


def _package_preprocessing(arch: str, ref: str, folder: Path) -> dict[str, Any]:
    """The package's preprocessing and class names; a package of another model than ``arch`` is a ValueError."""
    from .package import package_preprocessing, package_spec, read_package_config
    spec = package_spec(read_package_config(folder), ref)
    if spec.arch != arch:
        raise ValueError(f"--pretrained {ref} holds a {spec.arch} (its config.json), not --arch {arch}: train it "
                         f"with --arch {spec.arch}")
    return {**package_preprocessing(spec), "class_names": list(spec.class_names)}


def _package_model(folder: Path, state: dict[str, torch.Tensor]) -> nn.Module:
    """The package's own model with ``state`` loaded strictly (``models.package.package_model``)."""
    from .package import package_model
    return package_model(folder, state)[0]


_RESOLVERS: dict[str, Callable[[str, str], NamedWeights]] = {
    "torchvision": _torchvision, "efficientnet-pytorch": _efficientnet_pytorch, "resnest": _resnest, "timm": _timm,
}
