"""Deployable exports of a classifier: TorchScript and ONNX files that carry their own metadata.

Both formats take a float ``N x C x H x W`` batch (C: the spec's ``in_chans``), already normalised as
``(x / peak - mean) / std`` (peak 255, or 65535 for ``bit_depth`` 16),
and return logits. A consumer (``demos/classifier.py``) needs nothing but the file: the class names, input
size, resize mode, normalisation, head and ``--calibrate``'s softmax ``temperature`` travel inside it, as the
TorchScript extra file ``metadata.json`` and as the ONNX model's ``metadata_props`` (one JSON-encoded value per
key). A multi-label export says so (``multi_label``) and carries its per-class decision ``thresholds``.

TorchScript files are frozen (weights inlined, conv+bn folded, dropout gone). The device-specific
``torch.jit.optimize_for_inference`` pass (oneDNN layouts) cannot be serialised, so loaders apply it
when they load the file (:func:`load_torchscript`), as the demo does.
"""
from __future__ import annotations

import copy
import functools
import json
import logging
import math
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import torch
import torch.nn as nn

from models.spec import ModelSpec
from utils.atomic import atomic_path

logger = logging.getLogger(__name__)

METADATA_FILE = "metadata.json"
METADATA_VERSION = 1
INPUT_NAME, OUTPUT_NAME = "input", "logits"
# An fp32 export may differ from the eager model by RTOL x max(1, max |eager logit|), or, for a model whose own
# fp32 logits are less exact than that, by FLOAT64_FACTOR x eager's distance from float64 logits (see logit_bound)
RTOL = 1e-3
FLOAT64_FACTOR = 20.0
# An fp16 export (--onnx --half) may differ by FP16_RTOL x max(1, max |eager logit|), or by FP16_FACTOR x
# the eager model's distance from its own torch fp16 logits where that is larger: see Fp16Graph
FP16_RTOL = 1e-2
FP16_FACTOR = 4.0

Runner = Callable[[torch.Tensor], torch.Tensor]


class ExportError(ValueError):
    """A model could not be exported, or its export does not reproduce the eager model."""


OUTPUT_SINGLE_LABEL = "logits (probabilities: softmax(logits / temperature), or sigmoid for head bce)"
OUTPUT_MULTI_LABEL = ("logits (multi-label: per-class sigmoid probabilities; the labels are the classes whose "
                      "probability is >= their entry of thresholds)")


def export_metadata(spec: ModelSpec) -> dict[str, Any]:
    """What a consumer needs to preprocess images and name the outputs: the model's spec, under the keys
    ``demos/classifier.py`` reads (``resize`` is the spec's ``eval_resize``); the task (``multi_label``) and,
    for a multi-label model, its decision ``thresholds`` (one per class, 0.5 where none were tuned)."""
    return {
        "format_version": METADATA_VERSION,
        "arch": spec.arch,
        "class_names": list(spec.class_names),
        "image_size": list(spec.image_size),
        "resize": spec.eval_resize,
        "interpolation": spec.interpolation,  # antialiased, uint8 as torchvision
        "crop_pct": spec.crop_pct,
        # the pretrained weights' evaluation size and crop (null: none); an export made with --use_test_size
        # has them as its image_size and crop_pct
        "test_image_size": list(spec.test_image_size) if spec.test_image_size else None,
        "test_crop_pct": spec.test_crop_pct,
        "mean": list(spec.mean),
        "std": list(spec.std),
        "head": spec.head,
        "in_chans": spec.in_chans,  # 1: grey (luma), 3: RGB
        "bit_depth": spec.bit_depth,  # 8: x in 0..255; 16: x in 0..65535 (8-bit images x 257)
        "input": f"float32 N x {spec.in_chans} x H x W, {'RGB' if spec.in_chans == 3 else 'grey'}, "
                 f"(x / {2 ** spec.bit_depth - 1} - mean) / std after the resize",
        "output": OUTPUT_MULTI_LABEL if spec.multi_label else OUTPUT_SINGLE_LABEL,
        # multi-label: the image's labels are the classes whose sigmoid probability is >= their threshold
        "multi_label": spec.multi_label,
        "thresholds": spec.decision_thresholds if spec.multi_label else [],
        "temperature": spec.temperature,  # --calibrate's: the logits are divided by it before the softmax
    }


# ---------------------------------------------------------------------------------------------------
# Family-specific preparation


def _efficientnet_pytorch(model: nn.Module) -> nn.Module:
    # Its memory-efficient swish is a custom autograd Function: a traced TorchScript module cannot hold it
    # (saving fails), and exporters should see the plain x * sigmoid(x) it computes anyway.
    model.set_swish(memory_efficient=False)
    return model


PREPARE: dict[str, Callable[[nn.Module], nn.Module]] = {"efficientnet-pytorch": _efficientnet_pytorch}


def prepare_for_export(model: nn.Module, family: str) -> nn.Module:
    """The model in eval mode with whatever its family needs switched for export (in place)."""
    return PREPARE.get(family, lambda m: m)(model.eval())


# ---------------------------------------------------------------------------------------------------
# TorchScript


@contextmanager
def _quiet() -> Iterator[None]:
    """Silence the exporters' deprecation and tracer chatter (one warning per module otherwise)."""
    with warnings.catch_warnings():
        for category in (FutureWarning, DeprecationWarning, UserWarning, torch.jit.TracerWarning):
            warnings.simplefilter("ignore", category)
        yield


def to_torchscript(model: nn.Module, example: torch.Tensor) -> tuple[torch.jit.ScriptModule, str]:
    """A frozen TorchScript module of ``model``: scripted where it allows, else traced on ``example``.

    Returns the module and how it was made (``script`` or ``trace``). A traced module keeps the
    control flow of ``example``'s size: export at the size you serve.
    """
    with _quiet():
        try:
            module, method = torch.jit.script(model), "script"
        except Exception as e:  # scripting fails in many ways on non-scriptable Python
            logger.info("scripting failed (%s: %s); tracing instead", type(e).__name__,
                        (str(e).strip().splitlines() or [""])[0][:200])
            with torch.no_grad():
                module, method = torch.jit.trace(model, example, check_trace=False), "trace"
        return torch.jit.freeze(module.eval()), method


def save_torchscript(module: torch.jit.ScriptModule, path: str | Path, metadata: Mapping[str, Any]) -> Path:
    """Write ``module`` with ``metadata`` as its ``metadata.json`` extra file (atomically)."""
    path = Path(path)
    with atomic_path(path) as tmp, _quiet():
        torch.jit.save(module, str(tmp), _extra_files={METADATA_FILE: json.dumps(dict(metadata))})
    return path


def load_torchscript(path: str | Path, optimize: bool = True) -> tuple[torch.jit.ScriptModule, dict[str, Any]]:
    """A TorchScript export on the CPU and its metadata; ``optimize`` applies ``optimize_for_inference``."""
    extra = {METADATA_FILE: ""}
    with _quiet():
        module = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
        if optimize:
            module = torch.jit.optimize_for_inference(module)
    return module, json.loads(extra[METADATA_FILE] or "{}")


def torchscript_runner(path: str | Path, optimize: bool = True) -> Runner:
    """``batch -> logits`` through the TorchScript file at ``path``."""
    module, _ = load_torchscript(path, optimize=optimize)

    def run(x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return module(x)
    return run


# ---------------------------------------------------------------------------------------------------
# ONNX


def torch_onnx_max_opset() -> int:
    """The newest opset torch's TorchScript-based ONNX exporter writes (the one that needs no onnxscript)."""
    try:
        from torch.onnx._constants import ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET
        return int(ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET)
    except ImportError:  # a private constant: fall back to a long-supported opset
        return 17


@functools.lru_cache(maxsize=None)
def onnxruntime_max_opset() -> int:
    """The newest ``ai.onnx`` opset the installed onnxruntime loads, found by loading a one-node model."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "probe",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    for opset in range(onnx.defs.onnx_opset_version(), 6, -1):
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)
        try:
            ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
            return opset
        except Exception:  # onnxruntime refuses opsets newer than it knows
            continue
    raise ExportError(f"onnxruntime {ort.__version__} loads no opset >= 7: reinstall onnxruntime")


def choose_opset(requested: int | None = None) -> int:
    """``requested``, or the newest opset both torch's exporter and the installed onnxruntime support."""
    import onnxruntime as ort
    torch_max, ort_max = torch_onnx_max_opset(), onnxruntime_max_opset()
    best = min(torch_max, ort_max)
    if requested is None:
        return best
    if not 7 <= requested <= best:
        raise ExportError(f"--opset {requested} is not supported here: torch's exporter writes opsets up to "
                          f"{torch_max}, onnxruntime {ort.__version__} runs up to {ort_max}; "
                          f"use --opset 7..{best} or leave it out")
    return requested


def export_onnx(model: nn.Module, example: torch.Tensor, path: str | Path, metadata: Mapping[str, Any],
                opset: int) -> Path:
    """Write ``model`` as ONNX with a dynamic batch axis and ``metadata`` in its metadata properties."""
    import onnx
    path = Path(path)
    with atomic_path(path) as tmp:
        with _quiet(), torch.no_grad():
            torch.onnx.export(model, (example,), str(tmp), dynamo=False, opset_version=opset,
                              input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], do_constant_folding=True,
                              dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}})
        onnx.checker.check_model(onnx.load(str(tmp)))
        set_onnx_metadata(tmp, metadata)
    return path


def set_onnx_metadata(path: str | Path, metadata: Mapping[str, Any]) -> None:
    """Replace the metadata properties of the ONNX file at ``path`` by ``metadata`` (one JSON value per key)."""
    import onnx
    proto = onnx.load(str(path))
    del proto.metadata_props[:]
    for key, value in metadata.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = str(key), json.dumps(value)
    onnx.save(proto, str(path))


def onnx_session(path: str | Path, threads: int | None = None):
    """An onnxruntime CPU session with every graph optimisation on (``threads`` intra-op threads)."""
    import onnxruntime as ort
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def read_onnx_metadata(path: str | Path) -> dict[str, Any]:
    """The metadata an ONNX export carries, values decoded from JSON."""
    props = onnx_session(path).get_modelmeta().custom_metadata_map
    return {k: json.loads(v) for k, v in props.items()}


def onnx_runner(path: str | Path, threads: int | None = None) -> Runner:
    """``batch -> logits`` through the ONNX file at ``path`` in onnxruntime."""
    session = onnx_session(path, threads)

    def run(x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(session.run([OUTPUT_NAME], {INPUT_NAME: x.detach().cpu().numpy()})[0])
    return run


class Fp16Graph(nn.Module):
    """``model`` computing in float16 between a float32 input and float32 logits (``--onnx --half``).

    The weights and every activation are float16, so the file is about half the size and GPU runtimes run
    it on their fp16 units; the graph's input and output stay float32 (a Cast at each end), so consumers
    (the demo, a Triton ``config.pbtxt``) feed and read what they do for the fp32 file.

    Its tolerance (``verify_export`` with ``FP16_RTOL`` and the ``FP16`` reference): fp16 keeps 11 significant
    bits, about 3 decimal digits (unit roundoff 2^-11 = 4.9e-4, 2^13 times fp32's), and every layer rounds its
    output, so the logits move by a few times that relative to the activations' scale: 1e-2 x max(1, max |logit|),
    or, where larger, ``FP16_FACTOR`` (4) x the eager model's own distance from its logits computed by torch in
    float16 throughout (this module run eagerly), the fp16 counterpart of the fp32 bound's float64 term. Measured
    on the tests' checkpoints (random weights, batch-norm statistics of the digits, 16-32 px): ONNX Runtime's fp16
    logits are 2.3e-4 (simple_cnn) to 1.7e-2 (efficientnet-b0) x max(1, max |logit|) from eager fp32, and at most
    0.93x torch's own fp16 distance (resnet18).

    What the CPU check verifies: ONNX Runtime's CPU provider has few float16 kernels and inserts Casts to float32
    around the others (Conv, Gemm, ...), so it computes mostly in fp32 from the fp16 weights: it checks the fp16
    weights and the graph, not a GPU's fp16 arithmetic. The torch fp16 reference (this module, always computed for
    an fp16 export) stands in for that: a model whose fp16 logits are inf or NaN overflows float16 (largest finite
    value 65504) and is refused, as are non-finite export logits and a top-1 that differs from eager's.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = copy.deepcopy(model).half()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x.half()).float()


# ---------------------------------------------------------------------------------------------------
# Verification


def float64_logits(model: nn.Module, images: torch.Tensor) -> torch.Tensor | None:
    """Logits of ``model`` computed in float64 (``None`` when the model cannot run in float64)."""
    try:
        exact_model = copy.deepcopy(model).double()
        with torch.no_grad():
            return exact_model(images.double())
    except Exception as e:  # e.g. an op without a float64 kernel
        logger.info("cannot run the model in float64 (%s: %s)", type(e).__name__, e)
        return None


def logit_bound(max_abs_logit: float, rtol: float = RTOL, eager_float64_error: float | None = None,
                factor: float = FLOAT64_FACTOR) -> float:
    """The largest max |logit difference| from the eager fp32 model accepted for an fp32 export whose eager
    logits reach ``max_abs_logit``: ``rtol * max(1, max_abs_logit)``, or where the eager model's own distance
    from float64 logits is known and larger, ``FLOAT64_FACTOR * eager_float64_error``.

    Two fp32 runtimes computing the same function round differently (their kernels sum in their own order;
    oneDNN and MLAS run other code on AVX2 and AVX-512), by an amount that grows with the activations'
    scale, which the logits' scale measures; the floor of 1 keeps near-zero logits from asking for more
    than fp32 resolves. A model whose activations are much larger than its logits rounds further from
    exact than its logits' scale says: its eager fp32 error then measures what fp32 can do for it.

    Measured over every family of docs/models.md at 224x224 on both kernel paths (AVX-512, AVX2;
    ``benchmarks/onnx_families.py``, tables in docs/export_deploy.md): correct TorchScript, ONNX Runtime
    and OpenVINO exports differ from eager by at most 2.3e-4 x max(1, max |logit|) and at most 3x eager's
    own distance from float64; wrong exports (1% noise on the stem convolution's weight, a missing
    mean/std normalisation) by 6x the bound (the stem noise in a random-init ConvNeXt, whose blocks are
    near identities) to thousands of times. RTOL leaves a correct export 4x room, FLOAT64_FACTOR 7x:
    room for a runtime several times less exact than eager (issue #26: 8x on a Xeon, for logits
    that the relative term covers). An fp16 export is held to ``FP16_RTOL`` and ``FP16_FACTOR`` x eager's
    distance from its torch fp16 logits instead (``factor``; see :class:`Fp16Graph`).
    """
    bound = rtol * max(1.0, max_abs_logit)
    if eager_float64_error is not None and math.isfinite(eager_float64_error):  # never widened to inf (or NaN)
        bound = max(bound, factor * eager_float64_error)
    return bound


@dataclass(frozen=True)
class Reference:
    """What an export that misses the relative bound is measured against instead: the eager model computed by
    ``logits`` (float64, or fp16 for an fp16 export), accepted within ``factor`` x the eager fp32 model's distance
    from it, which says how far from fp32 that arithmetic takes this model.

    ``fp16``: the reference of an fp16 export, computed always (not only past the relative bound) because it also
    says whether the model overflows float16; its logits and the export's must be finite, and the export's top-1
    must equal eager's (:func:`verify_export`)."""
    name: str  # "float64" or "fp16": the report's eager_<name>_error
    text: str
    factor: float
    logits: Callable[[nn.Module, torch.Tensor], "torch.Tensor | None"]
    fp16: bool = False


def fp16_logits(model: nn.Module, images: torch.Tensor) -> torch.Tensor | None:
    """Logits of ``model`` computed by torch in float16 throughout (``Fp16Graph``), as float32 (``None`` when
    the model cannot run in float16 here)."""
    try:
        with torch.no_grad():
            return Fp16Graph(model)(images)
    except Exception as e:  # e.g. an op without a float16 CPU kernel
        logger.info("cannot run the model in float16 (%s: %s)", type(e).__name__, e)
        return None


FLOAT64 = Reference("float64", "float64 logits", FLOAT64_FACTOR, float64_logits)
# an fp16 runtime may be FP16_FACTOR x as far from the fp32 logits as torch's own fp16 computation (Fp16Graph)
FP16 = Reference("fp16", "its own fp16 logits (torch, float16 throughout)", FP16_FACTOR, fp16_logits, fp16=True)
FP16_MAX = 65504.0  # float16's largest finite value
FP16_OVERFLOW_FIX = ("keep the fp32 export (drop --half), or run the model in bfloat16 on the GPU (fp32's range; "
                     "e.g. --amp --amp_dtype bf16)")


def _non_finite_rows(*logits: torch.Tensor) -> int:
    """How many rows of ``logits`` (several tensors of the same images: the batch, the first alone) hold an inf or
    NaN."""
    return max(int((~torch.isfinite(x)).any(1).sum()) for x in logits)


def check_finite(what: str, got: torch.Tensor, got_one: torch.Tensor, fp16: torch.Tensor | None,
                 max_abs_logit: float, fp16_export: bool) -> None:
    """Refuse an export whose logits (``got``: the batch, ``got_one``: the first image alone) hold an inf or NaN,
    and for an fp16 export also a model whose ``fp16`` logits (torch's, float16 throughout) do: the model
    overflows float16, and a bound widened by an infinite distance would accept anything."""
    count = len(got)
    overflow = (f": the model overflows float16 (its fp32 logits reach {max_abs_logit:.3g}, float16's largest finite "
                f"value is {FP16_MAX:g}); {FP16_OVERFLOW_FIX}")
    bad = _non_finite_rows(fp16) if fp16 is not None else 0
    if bad:
        raise ExportError(f"{what}: the eager model computed by torch in float16 gives inf or NaN logits on {bad} of "
                          f"{count} real images{overflow}")
    bad = _non_finite_rows(got, got_one)
    if bad:
        raise ExportError(f"{what} returns inf or NaN logits on {bad} of {count} real images"
                          + (overflow if fp16_export else ""))


def check_top1(what: str, expected: torch.Tensor, got: torch.Tensor, got_one: torch.Tensor,
               fp16: torch.Tensor | None) -> None:
    """Refuse an fp16 export whose top-1 class differs from the eager model's on a sample image (batched or the
    first alone), unless torch's own ``fp16`` logits pick another class there too (a near tie that float16 cannot
    split). Within the logit bound a top-1 can only move on such near ties, so this adds a check the bound cannot
    make where the bound is loose: logits near zero (an all-zeros export passes 1e-2 x max(1, ...))."""
    eager = expected.argmax(1)
    moved = got.argmax(1) != eager
    moved[0] |= bool(got_one.argmax(1)[0] != eager[0])
    if fp16 is not None:
        moved &= fp16.argmax(1) == eager
    if moved.any():
        rows = moved.nonzero().flatten().tolist()
        shown = ", ".join(f"image {i}: eager class {int(eager[i])}, the export {int(got[i].argmax())}"
                          for i in rows[:5])
        kept = ", where torch's own fp16 logits keep eager's" if fp16 is not None else ""
        raise ExportError(f"{what} changes the top-1 class of {len(rows)} of {len(expected)} real images ({shown})"
                          f"{kept}: it does not compute the model")


def _bound_text(rtol: float, max_abs_logit: float, reference: Reference | None) -> str:
    relative = f"{rtol:g} x max(1, max |logit| {max_abs_logit:.3g})"
    if reference is None:
        return relative
    return f"the larger of {relative} and {reference.factor:g} x the eager model's distance from {reference.text}"


def verify_export(what: str, model: nn.Module, runner: Runner, images: torch.Tensor,
                  rtol: float = RTOL, reference: Reference = FLOAT64) -> dict[str, float]:
    """Check ``runner`` (an export) against the eager ``model`` on ``images``, batched and the first alone
    (which checks that the batch axis really is dynamic); raise :class:`ExportError` when it differs.

    Accepted: finite logits, max |logit difference| <= :func:`logit_bound` (``rtol``: ``RTOL`` unless the runtime
    needs its own; ``reference``: ``FLOAT64``, or ``FP16`` for an fp16 export). The float64 reference is computed
    only when the difference exceeds the relative bound; the fp16 one always, and an fp16 export is also refused
    when torch's fp16 logits are not finite (the model overflows float16: :func:`check_finite`) and when its top-1
    differs from eager's (:func:`check_top1`). Returns the differences measured, the bound and how it was set
    (``bound_from``).
    """
    with torch.no_grad():
        expected = model(images).float()
    got, got_one = runner(images).float(), runner(images[:1]).float()
    if got.shape != expected.shape or got_one.shape != expected[:1].shape:
        raise ExportError(f"{what} returns shape {tuple(got.shape)}, the eager model {tuple(expected.shape)}")
    max_logit = float(expected.abs().max())
    fp16 = reference.logits(model, images) if reference.fp16 else None  # always: it says whether fp16 overflows
    check_finite(what, got, got_one, fp16, max_logit, reference.fp16)
    diff = float(torch.maximum((got - expected).abs().max(), (got_one - expected[:1]).abs().max()))
    report = {"max_abs_diff": diff, "max_abs_logit": max_logit, "bound": logit_bound(max_logit, rtol),
              "bound_from": _bound_text(rtol, max_logit, None)}
    if not diff <= report["bound"]:  # also for NaN
        exact = fp16 if reference.fp16 else reference.logits(model, images)
        report = _against_reference(what, report, expected, got, got_one, exact, rtol, reference, len(images))
    if reference.fp16:
        check_top1(what, expected, got, got_one, fp16)
    return report


def _against_reference(what: str, report: dict[str, Any], expected: torch.Tensor, got: torch.Tensor,
                       got_one: torch.Tensor, exact: torch.Tensor | None, rtol: float, reference: Reference,
                       count: int) -> dict[str, Any]:
    """``report`` of an export past the relative bound, with the bound widened to ``reference.factor`` x the eager
    model's distance from the ``exact`` (reference) logits, where known; raise :class:`ExportError` past that."""
    diff, max_logit = report["max_abs_diff"], report["max_abs_logit"]
    detail = ""
    if exact is not None:
        eager_error = float((expected.double() - exact.double()).abs().max())
        report.update({f"eager_{reference.name}_error": eager_error,
                       "bound": logit_bound(max_logit, rtol, eager_error, reference.factor),
                       "bound_from": _bound_text(rtol, max_logit, reference)})
        if reference is FLOAT64:
            export_error = float(torch.maximum((got.double() - exact).abs().max(),
                                               (got_one.double() - exact[:1]).abs().max()))
            report["export_float64_error"] = export_error
            detail = f"; it is {export_error:.3g} from exact (float64) logits, the eager model {eager_error:.3g}"
        else:
            detail = f"; the eager model is {eager_error:.3g} from {reference.text}"
        if diff <= report["bound"]:
            logger.warning("%s differs from eager by %.3g > %.3g x max(1, max |logit| %.3g), but the eager fp32 model "
                           "is itself %.3g from %s: accepted within %g x that, %.3g",
                           what, diff, rtol, max_logit, eager_error, reference.text, reference.factor, report["bound"])
            return report
    raise ExportError(f"{what} does not reproduce the eager model: max |logit difference| {diff:.3g} > "
                      f"{report['bound']:.3g} on {count} real images (the bound: {report['bound_from']}){detail}")
