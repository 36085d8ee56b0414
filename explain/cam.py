"""CAM-family heatmaps for batches of images: one method, one layer, hooks that live only inside a ``with``.

* ``cam`` (Zhou et al., CVPR 2016) is written here: for a model that ends in global average pooling
  and one linear layer, the heatmap of class c is ``sum_k w[c, k] * A_k``, where ``A`` is the feature
  map the pooling averages. That map is found, not configured: it is the last module output whose
  spatial mean equals the classifier's input (checked on every batch), so the same code serves every
  family, and a model with another head gets a clear error that points to Grad-CAM.
* ``grad-cam``, ``grad-cam++``, ``score-cam``, ``xgrad-cam``, ``eigen-cam`` and ``layer-cam`` come from
  the grad-cam package (pytorch-grad-cam); only the target layer and the batching are ours.

Every heatmap is post-processed the same way (ReLU, min-max to [0, 1] per image, bilinear resize to
the input size: the package's own steps), so the methods compare directly; for a GAP + linear model
CAM and Grad-CAM on the pooled feature map are the same map (the gradient of a logit with respect to
``A_k`` is ``w[c, k] / (h * w)`` at every position). Methods that need no gradients (cam, score-cam,
eigen-cam) run under ``torch.no_grad``; the others take gradients with respect to the input only, so
the model's parameters and their ``.grad`` are left as they were.
"""
from __future__ import annotations

import contextlib
import io
import logging
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
import torch.nn as nn

logger = logging.getLogger(__name__)

CAM_HELP = ("use --visual_method grad-cam (or grad-cam++), which works on any convolutional model")


@dataclass
class Explanation:
    """Heatmaps of one batch and what they explain."""
    heatmaps: np.ndarray           # N x H x W float32 in [0, 1], at the input's size
    logits: torch.Tensor           # N x C float32 on the CPU
    classes: list[int]             # the class each heatmap explains (eigen-cam ignores it: class-agnostic)
    feature_size: tuple[int, int]  # spatial size of the explained layer's maps (1 x 1 carries no layout)


def scale_maps(maps: np.ndarray, size: tuple[int, int] | None = None) -> np.ndarray:
    """Each ``h x w`` map min-max scaled to [0, 1], then resized bilinearly to ``size`` (W, H): the grad-cam
    package's ``scale_cam_image``, written out so that CAM and Grad-CAM do not import the package (which
    pulls in scikit-learn, scipy and matplotlib: 2.5 s at the end of every training run)."""
    import cv2
    out = []
    for m in maps:
        m = m - np.min(m)
        m = m / (1e-7 + np.max(m))
        out.append(cv2.resize(np.float32(m), size) if size is not None else m)
    return np.float32(out)


def postprocess(raw: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Raw ``N x h x w`` maps -> ``N x H x W`` in [0, 1]: exactly the grad-cam package's steps for one layer."""
    height, width = size
    scaled = scale_maps(np.maximum(raw, 0), (width, height))
    return scale_maps(np.maximum(scaled, 0))


# --------------------------------------------------------------------------------------------- hooks
@contextmanager
def _hooks(handles: list[torch.utils.hooks.RemovableHandle]) -> Iterator[list]:
    """Removes every handle appended to the list when the block ends, error or not."""
    try:
        yield handles
    finally:
        for handle in handles:
            handle.remove()
        handles.clear()


@contextmanager
def inference_state(model: nn.Module) -> Iterator[None]:
    """Eval mode and frozen parameters for the block; the mode, ``requires_grad`` and ``.grad`` come back after."""
    params = list(model.parameters())
    saved = [(p.requires_grad, p.grad) for p in params]
    training = model.training
    try:
        model.eval()
        for p in params:
            p.requires_grad_(False)
        yield
    finally:
        for p, (requires_grad, grad) in zip(params, saved):
            p.requires_grad_(requires_grad)
            p.grad = grad
        model.train(training)


# ---------------------------------------------------------------------------------------------- CAM
def _cam_error(why: str) -> ValueError:
    return ValueError(f"--visual_method cam needs a model that ends in global average pooling and one linear "
                      f"layer: {why}; {CAM_HELP}")


@dataclass
class _Probe:
    """What one forward pass shows about the head: the output linear layer and the feature maps it pools."""
    linear_name: str
    linear: nn.Linear
    pooled_layers: list[str]  # modules whose output averages to the linear's input (before the pooling)
    pooled_map: str | None     # the one the pooling reads: its input is not such a map (unlike the pooling's)


def _probe_head(model: nn.Module, images: torch.Tensor) -> _Probe:
    """Run one forward pass with a hook on every module and find the classifier and the map it pools."""
    records: list[tuple[str, Any, Any]] = []  # (name, first input, output) in the order modules finish

    def record(name: str) -> Callable:
        def hook(module: nn.Module, args: tuple, output: Any) -> None:
            records.append((name, args[0] if args else None, output))
        return hook

    with _hooks([]) as handles, torch.no_grad():
        for name, module in model.named_modules():
            if name:
                handles.append(module.register_forward_hook(record(name)))
        logits = model(images)
    heads = [(name, inp) for name, inp, out in records
             if out is logits and isinstance(model.get_submodule(name), nn.Linear)]
    if not heads:
        raise _cam_error(f"the output of {type(model).__name__} does not come straight from an nn.Linear layer")
    linear_name, pooled = heads[-1]
    # Values are read after the forward pass, so in-place ops (densenet's final ReLU) are already applied.
    pooled_layers = [(name, inp, out) for name, inp, out in records
                     if isinstance(out, torch.Tensor) and _is_pooled_map(out, pooled)]
    # The pooling itself (N x K x 1 x 1), in-place activations and identities after the map also average
    # to the classifier's input, but their input does too; and a 1 x 1 map computed from a 1 x 1 input
    # (convnext's LayerNorm after the pooling) comes after the pooling. The map the pooling reads is the
    # last one that is neither.
    sources = [name for name, inp, out in pooled_layers
               if not (isinstance(inp, torch.Tensor) and _is_pooled_map(inp, pooled))
               and (_spatial(out) > 1 or _spatial(inp) > 1)]
    before_pooling = [name for name, inp, out in pooled_layers if _spatial(out) > 1 or _spatial(inp) > 1]
    return _Probe(linear_name, model.get_submodule(linear_name), before_pooling, sources[-1] if sources else None)


def _spatial(t: Any) -> int:
    return t.shape[-2] * t.shape[-1] if isinstance(t, torch.Tensor) and t.dim() == 4 else 0


def _is_pooled_map(maps: torch.Tensor, pooled: torch.Tensor) -> bool:
    """Whether ``pooled`` (N x K) is the spatial mean of ``maps`` (N x K x h x w)."""
    if maps.dim() != 4 or pooled.dim() != 2 or maps.shape[:2] != pooled.shape:
        return False
    mean = maps.float().mean(dim=(2, 3))
    scale = float(pooled.abs().max()) if pooled.numel() else 0.0  # relative: random-init features can be tiny
    return torch.allclose(mean, pooled.float(), rtol=1e-3, atol=1e-4 * scale)


PROBE_SIDE = 64  # stride-32 networks still keep 2 x 2 maps at this size, so the pooling shows in the probe


def _probe_input(images: torch.Tensor) -> torch.Tensor:
    """One image, enlarged to at least PROBE_SIDE pixels a side: on a tiny input every late map is 1 x 1,
    and a 1 x 1 map before the pooling cannot be told from one after it (convnext's LayerNorm)."""
    image = images[:1]
    height, width = image.shape[-2:]
    if min(height, width) >= PROBE_SIDE:
        return image
    size = (max(height, PROBE_SIDE), max(width, PROBE_SIDE))
    return torch.nn.functional.interpolate(image, size=size, mode="bilinear", align_corners=False)


class ClassActivationMap:
    """CAM with the classifier's weights; hooks on the feature layer and the classifier until :meth:`release`."""

    def __init__(self, model: nn.Module, layer_name: str | None = None):
        self.model, self.layer_name = model, layer_name
        self.linear: nn.Linear | None = None
        self.handles: list[torch.utils.hooks.RemovableHandle] = []
        self._maps: torch.Tensor | None = None
        self._pooled: torch.Tensor | None = None

    def _attach(self, images: torch.Tensor) -> None:
        try:
            probe = _probe_head(self.model, _probe_input(images))
        except RuntimeError:  # a model bound to its input size: probe at that size
            probe = _probe_head(self.model, images[:1])
        if self.layer_name is None:
            if probe.pooled_map is None:
                raise _cam_error(f"no feature map of {type(self.model).__name__} averages to the input of its "
                                 f"classifier {probe.linear_name!r}")
            self.layer_name = probe.pooled_map
        elif self.layer_name not in probe.pooled_layers:
            found = f" (the pooled feature map is the output of {probe.pooled_map!r})" if probe.pooled_map else ""
            raise _cam_error(f"the classifier {probe.linear_name!r} is not the global average of the output of "
                             f"--target_layer {self.layer_name!r}{found}")
        self.linear = probe.linear
        self.handles.append(self.model.get_submodule(self.layer_name).register_forward_hook(self._keep_maps))
        self.handles.append(self.linear.register_forward_hook(self._keep_pooled))

    def _keep_maps(self, module: nn.Module, args: tuple, output: torch.Tensor) -> None:
        self._maps = output  # the last call wins: a module reused earlier in the network is overwritten

    def _keep_pooled(self, module: nn.Module, args: tuple, output: torch.Tensor) -> None:
        self._pooled = args[0]

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, classes: Sequence[int] | None) -> tuple[np.ndarray, torch.Tensor,
                                                                                     tuple[int, int]]:
        if self.linear is None:
            self._attach(images)
        logits = self.model(images)
        maps, pooled = self._maps, self._pooled
        self._maps = self._pooled = None
        if maps is None or pooled is None or not _is_pooled_map(maps, pooled):
            raise _cam_error(f"the classifier's input is not the global average of layer {self.layer_name!r} "
                             f"for this batch")
        chosen = logits.argmax(dim=1) if classes is None else torch.as_tensor(list(classes), device=logits.device)
        weights = self.linear.weight[chosen].to(maps.dtype)  # N x K
        raw = torch.einsum("nk,nkhw->nhw", weights, maps).float().cpu().numpy()
        return postprocess(raw, tuple(images.shape[-2:])), logits, tuple(maps.shape[-2:])

    def release(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles.clear()
        self._maps = self._pooled = None


def _layer_error(layer_name: str, detail: str) -> ValueError:
    return ValueError(f"cannot explain layer {layer_name!r}: {detail}; the layer must output N x C x H x W "
                      f"feature maps: pick a convolutional stage with --target_layer")


class GradCam:
    """Grad-CAM (Selvaraju et al., 2017): the layer's maps weighted by the spatial mean of the gradient of
    the explained class's logit. The same numbers as the grad-cam package's ``GradCAM`` (tested), without
    importing the package; a hook on the layer until :meth:`release`."""

    def __init__(self, model: nn.Module, layer_name: str):
        from models import resolve_target_layer
        self.model, self.layer_name = model, layer_name
        self._maps: torch.Tensor | None = None
        self.handles = [resolve_target_layer(model, layer_name).register_forward_hook(self._keep_maps)]

    def _keep_maps(self, module: nn.Module, args: tuple, output: torch.Tensor) -> None:
        self._maps = output  # the last call wins, as in ClassActivationMap

    def __call__(self, images: torch.Tensor, classes: Sequence[int] | None) -> tuple[np.ndarray, torch.Tensor,
                                                                                     tuple[int, int]]:
        with torch.enable_grad():
            images = images.detach().requires_grad_(True)  # gradients flow to the input, not the weights
            logits = self.model(images)
            maps, self._maps = self._maps, None
            if not isinstance(maps, torch.Tensor) or maps.dim() != 4:
                shape = tuple(maps.shape) if isinstance(maps, torch.Tensor) else type(maps).__name__
                raise _layer_error(self.layer_name, f"its output is {shape}")
            chosen = logits.argmax(dim=1) if classes is None else torch.as_tensor(list(classes), device=logits.device)
            (grads,) = torch.autograd.grad(logits.gather(1, chosen.view(-1, 1)).sum(), maps)
        activations, grads = maps.detach().float().cpu().numpy(), grads.float().cpu().numpy()
        weights = np.mean(grads, axis=(2, 3))
        raw = (weights[:, :, None, None] * activations).sum(axis=1)
        return postprocess(raw, tuple(images.shape[-2:])), logits.detach(), tuple(maps.shape[-2:])

    def release(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles.clear()
        self._maps = None


# ------------------------------------------------------------------------------ grad-cam package methods
def _signed_eigen_cam() -> type:
    """EigenCAM whose principal component is oriented so that the salient region is positive.

    The package's EigenCAM keeps the sign the SVD happens to return, so the same image can come out
    inverted; the package's own ``get_2d_projection_with_sign_correction`` (Seg-Eigen-CAM, Eq. 13) fixes it.
    """
    from pytorch_grad_cam import EigenCAM
    from pytorch_grad_cam.utils.svd_on_activations import get_2d_projection_with_sign_correction

    class SignedEigenCAM(EigenCAM):
        def get_cam_image(self, input_tensor, target_layer, target_category, activations, grads, eigen_smooth):
            return get_2d_projection_with_sign_correction(activations)
    return SignedEigenCAM


def _package(name: str) -> Callable[[], type]:
    def load() -> type:
        import pytorch_grad_cam
        return getattr(pytorch_grad_cam, name)
    return load


@dataclass(frozen=True)
class MethodSpec:
    """How to build a method: ``load()`` returns a grad-cam package class, or ``native`` is our own."""
    load: Callable[[], type] | None
    needs_grad: bool
    images_per_call: Callable[[int, int], int] | None = None  # cap on images per call, from the input's H, W
    native: type | None = None  # ClassActivationMap or GradCam


def _score_cam_images(height: int, width: int) -> int:
    # Score-CAM masks every image with each of K channels at once (N x K x 3 x H x W floats): keep that
    # under ~256 MB for K up to 2048.
    return max(1, (64 * 2**20) // (2048 * 3 * height * width))


METHODS: dict[str, MethodSpec] = {
    "cam": MethodSpec(None, needs_grad=False, native=ClassActivationMap),
    "grad-cam": MethodSpec(None, needs_grad=True, native=GradCam),
    "grad-cam++": MethodSpec(_package("GradCAMPlusPlus"), needs_grad=True),
    "score-cam": MethodSpec(_package("ScoreCAM"), needs_grad=False, images_per_call=_score_cam_images),
    "xgrad-cam": MethodSpec(_package("XGradCAM"), needs_grad=True),
    "eigen-cam": MethodSpec(_signed_eigen_cam, needs_grad=False),
    "layer-cam": MethodSpec(_package("LayerCAM"), needs_grad=True),
}


def method_spec(method: str) -> MethodSpec:
    """The spec of ``method``; an unknown name is a ValueError listing the valid ones."""
    if method not in METHODS:
        raise ValueError(f"unknown --visual_method {method!r}; choose from {', '.join(METHODS)}")
    return METHODS[method]


class _PackageMethod:
    """A grad-cam package method behind the same call as :class:`ClassActivationMap`."""

    def __init__(self, model: nn.Module, layer_name: str, spec: MethodSpec):
        from models import resolve_target_layer
        self.spec, self.layer_name = spec, layer_name
        self.cam = spec.load()(model=model, target_layers=[resolve_target_layer(model, layer_name)])
        if spec.images_per_call is not None:
            self.cam.batch_size = 64  # score-cam: masked images per forward pass (the package's default is 16)

    def __call__(self, images: torch.Tensor, classes: Sequence[int] | None) -> tuple[np.ndarray, torch.Tensor,
                                                                                     tuple[int, int]]:
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
        targets = None if classes is None else [ClassifierOutputTarget(int(c)) for c in classes]
        with ExitStack() as stack:
            if self.spec.needs_grad:
                stack.enter_context(torch.enable_grad())
                images = images.detach().requires_grad_(True)  # gradients flow to the input, not the weights
            else:
                stack.enter_context(torch.no_grad())
            if self.spec.images_per_call is not None:  # score-cam draws a progress bar per image
                stack.enter_context(contextlib.redirect_stderr(io.StringIO()))
            try:
                heatmaps = self.cam(input_tensor=images, targets=targets)
            except ValueError as e:
                raise _layer_error(self.layer_name, str(e)) from None
        logits = self.cam.outputs.detach()
        self.cam.outputs = None  # frees the autograd graph kept by retain_graph
        activations = self.cam.activations_and_grads.activations
        size = tuple(activations[0].shape[-2:]) if activations else tuple(images.shape[-2:])
        return heatmaps, logits, size

    def release(self) -> None:
        self.cam.outputs = None
        self.cam.activations_and_grads.release()


# ------------------------------------------------------------------------------------------ the explainer
class CamExplainer:
    """Explains batches of normalised images with one method on one layer.

    Use it as a context manager: the hooks exist only inside the ``with`` block and are removed when it
    ends, error or not; the model is in eval mode with frozen parameters meanwhile and restored after.

        with CamExplainer(model, "grad-cam", layer="layer4") as explainer:
            for images in batches:
                result = explainer(images)              # the predicted class of each image
                result = explainer(images, classes=3)   # class 3 for every image
    """

    def __init__(self, model: nn.Module, method: str = "grad-cam", layer: str | None = None,
                 arch: str | None = None, input_size: Sequence[int] | None = None):
        self.model, self.method, self.spec = model, method, method_spec(method)
        if layer is not None:
            from models import resolve_target_layer
            resolve_target_layer(model, layer)  # an unknown name fails here, listing the valid ones
        elif method != "cam" and input_size is not None:  # the last stage whose maps are at least 4 x 4
            from models import spatial_target_layer
            layer = spatial_target_layer(model, arch, input_size)
        elif method != "cam":
            from models import default_target_layer
            layer = default_target_layer(model, arch)
        self.layer = layer  # for cam: None until the first batch shows which feature map is pooled
        self._stack: ExitStack | None = None
        self._impl: ClassActivationMap | GradCam | _PackageMethod | None = None

    def __enter__(self) -> "CamExplainer":
        stack = ExitStack()
        try:
            stack.enter_context(inference_state(self.model))
            self._impl = (self.spec.native(self.model, self.layer) if self.spec.native is not None
                          else _PackageMethod(self.model, self.layer, self.spec))
            stack.callback(self._release)
        except BaseException:
            stack.close()
            raise
        self._stack = stack
        return self

    def _release(self) -> None:
        if self._impl is not None:
            self._impl.release()
            self._impl = None

    def __exit__(self, *exc: Any) -> None:
        stack, self._stack = self._stack, None
        if stack is not None:
            stack.close()

    def __call__(self, images: torch.Tensor, classes: int | Sequence[int] | None = None) -> Explanation:
        """Heatmaps of ``images`` (normalised N x 3 x H x W on the model's device) for ``classes``:
        one class for all, one per image, or None for each image's predicted class."""
        if self._impl is None:
            raise RuntimeError("CamExplainer must be used inside a with block (its hooks live there)")
        if isinstance(classes, int):
            classes = [classes] * images.shape[0]
        cap = self.spec.images_per_call(*images.shape[-2:]) if self.spec.images_per_call else images.shape[0]
        parts = [self._impl(images[i:i + cap], None if classes is None else list(classes[i:i + cap]))
                 for i in range(0, images.shape[0], cap)]
        self.layer = self._impl.layer_name
        logits = torch.cat([p[1] for p in parts]).float().cpu()
        chosen = logits.argmax(dim=1).tolist() if classes is None else [int(c) for c in classes]
        return Explanation(np.concatenate([p[0] for p in parts]).astype(np.float32), logits, chosen, parts[0][2])


def explain(model: nn.Module, images: torch.Tensor, method: str = "grad-cam", layer: str | None = None,
            classes: int | Sequence[int] | None = None, arch: str | None = None) -> Explanation:
    """One-shot :class:`CamExplainer`: heatmaps of one batch; no hook outlives the call."""
    with CamExplainer(model, method, layer=layer, arch=arch) as explainer:
        return explainer(images, classes)
