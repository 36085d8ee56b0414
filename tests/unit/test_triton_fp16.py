"""export/triton.py's config.pbtxt (parsed into Triton's own ModelConfig message), the fp16 tolerance of
export/core.py, and the demo's ONNX backend feeding the dtype the graph declares."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn as nn
from google.protobuf import text_format
from onnx import TensorProto, helper
from tritonclient.grpc import model_config_pb2

from export.core import FP16, FP16_FACTOR, FP16_RTOL, ExportError, Fp16Graph, fp16_logits, verify_export
from export.triton import preferred_batch_sizes, triton_config, write_repository
from helpers import demo_module


def _graph(path, elem=TensorProto.FLOAT, classes: int = 3):
    """A tiny ONNX model: input N x 2 x 4 x 4 of ``elem`` -> ReduceMean over H, W -> N x 2, through a MatMul
    with a 2 x ``classes`` initializer -> N x ``classes`` logits of ``elem``; metadata as the exports carry."""
    import onnx
    np_type = np.float16 if elem == TensorProto.FLOAT16 else np.float32
    weight = helper.make_tensor("w", elem, [2, classes], np.arange(2 * classes, dtype=np_type).tobytes(), raw=True)
    nodes = [helper.make_node("ReduceMean", ["input"], ["pooled"], axes=[2, 3], keepdims=0),
             helper.make_node("MatMul", ["pooled", "w"], ["logits"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("input", elem, ["batch", 2, 4, 4])],
                              [helper.make_tensor_value_info("logits", elem, ["batch", classes])], [weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    meta = {"class_names": [str(i) for i in range(classes)], "image_size": [4, 4], "resize": "squash",
            "mean": [0.5, 0.5], "std": [0.25, 0.25], "head": "softmax", "in_chans": 2}
    for key, value in meta.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, json.dumps(value)
    onnx.save(model, str(path))
    return path


def test_config_parses_into_tritons_model_config_with_the_graphs_names_and_shapes(tmp_path):
    text = triton_config(_graph(tmp_path / "m.onnx"), "digits", 8)
    config = text_format.Parse(text, model_config_pb2.ModelConfig())
    assert config.name == "digits" and config.backend == "onnxruntime" and config.max_batch_size == 8
    (inp,), (out,) = config.input, config.output
    assert (inp.name, list(inp.dims), inp.data_type) == ("input", [2, 4, 4], model_config_pb2.TYPE_FP32)
    assert (out.name, list(out.dims), out.data_type) == ("logits", [3], model_config_pb2.TYPE_FP32)
    assert out.label_filename == "labels.txt"
    assert list(config.dynamic_batching.preferred_batch_size) == [4, 8]
    assert config.dynamic_batching.max_queue_delay_microseconds == 100


def test_an_fp16_graph_is_declared_fp16_and_batch_sizes_stay_in_range(tmp_path):
    config = text_format.Parse(triton_config(_graph(tmp_path / "h.onnx", TensorProto.FLOAT16), "h", 1),
                               model_config_pb2.ModelConfig())
    assert config.input[0].data_type == config.output[0].data_type == model_config_pb2.TYPE_FP16
    assert list(config.dynamic_batching.preferred_batch_size) == [1]
    assert preferred_batch_sizes(32) == [16, 32] and preferred_batch_sizes(5) == [2, 5]


def test_the_repository_replaces_an_earlier_model_folder_whole(tmp_path):
    onnx_file = _graph(tmp_path / "m.onnx")
    repo = tmp_path / "triton"
    (repo / "digits" / "2").mkdir(parents=True)  # what an earlier export left
    model_dir = write_repository(onnx_file, repo, "digits", ["zero", "one", "seven"], 4)
    assert sorted(p.relative_to(repo).as_posix() for p in repo.rglob("*")) == [
        "digits", "digits/1", "digits/1/model.onnx", "digits/config.pbtxt", "digits/labels.txt"]
    assert (model_dir / "labels.txt").read_text() == "zero\none\nseven\n"
    assert (model_dir / "1" / "model.onnx").read_bytes() == onnx_file.read_bytes()


class _Spread(nn.Module):
    """Logits (1000 * x0 - 1000 * x1, x2): fp16 keeps 11 significant bits of x0 and x1, so the first logit, near
    zero, is off from fp32 by far more than 1e-2 x max |logit| when x0 and x1 are close."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([1000 * x[:, 0] - 1000 * x[:, 1], x[:, 2]], 1)


def test_fp16_graph_keeps_float32_in_and_out_and_the_fp16_bound_uses_torchs_own_fp16():
    """By hand: x0 = 1.2345 and x1 = 1.2344 both round to 1.234375 in fp16 (spacing 2^-10 there), so torch's fp16
    logit is 0 where fp32 gives 0.1: eager's fp16 distance is 0.1, the bound max(1e-2 x 1, 4 x 0.1) = 0.4."""
    model = _Spread()
    x = torch.tensor([[1.2345, 1.2344, 1.0]])
    assert Fp16Graph(model)(x).dtype == torch.float32
    torch.testing.assert_close(fp16_logits(model, x), torch.tensor([[0.0, 1.0]]))
    report = verify_export("an fp16 export", model, lambda t: Fp16Graph(model)(t), x, rtol=FP16_RTOL, reference=FP16)
    assert report["eager_fp16_error"] == pytest.approx(0.1, abs=1e-3)
    assert report["bound"] == pytest.approx(FP16_FACTOR * report["eager_fp16_error"])
    assert "4 x the eager model's distance from its own fp16 logits" in report["bound_from"]
    with pytest.raises(ExportError, match=r"max \|logit difference\| 0.5\d* > 0.4\d* on 1 real images .* the eager "
                                          r"model is 0.1\d* from its own fp16 logits"):
        verify_export("a far export", model, lambda t: model(t) + torch.tensor([0.5, 0.0]), x, rtol=FP16_RTOL,
                      reference=FP16)


@pytest.mark.parametrize("elem", [TensorProto.FLOAT, TensorProto.FLOAT16])
def test_the_demo_feeds_the_input_dtype_the_onnx_graph_declares(tmp_path, elem):
    demo = demo_module()
    backend = demo.OnnxRuntimeBackend(_graph(tmp_path / "m.onnx", elem))
    assert backend.input_dtype == (np.float16 if elem == TensorProto.FLOAT16 else np.float32)
    x = torch.rand(3, 2, 4, 4)
    logits = backend(x)
    assert logits.dtype == torch.float32 and logits.shape == (3, 3)
    expected = x.mean((2, 3)) @ torch.arange(6, dtype=torch.float32).view(2, 3)
    torch.testing.assert_close(logits, expected, rtol=2e-3, atol=2e-3)


def _linear(weight: torch.Tensor) -> nn.Linear:
    """A Linear(12, K) with ``weight`` (K x 12) and no bias: logits are row sums times the input by hand."""
    model = nn.Linear(weight.shape[1], weight.shape[0], bias=False).eval()
    with torch.no_grad():
        model.weight.copy_(weight)
    return model


def _onnx_fp16_runner(model: nn.Module, example: torch.Tensor, tmp_path):
    """The real ``--onnx --half`` path: Fp16Graph exported to ONNX and run in ONNX Runtime on the CPU."""
    from export.core import export_onnx, onnx_runner
    return onnx_runner(export_onnx(Fp16Graph(model), example, tmp_path / "m.fp16.onnx", {}, 17))


def test_a_model_that_overflows_fp16_is_refused_though_onnx_runtime_on_the_cpu_computes_it_in_fp32(tmp_path):
    """By hand: weights 1e4 on 12 inputs of ~1.5 give logits of ~1.8e5 > 65504 (float16's largest finite value), so
    torch's fp16 logits are inf. ONNX Runtime's CPU provider casts around Gemm and gives the fp32 logits, so only the
    fp16 reference can see the overflow; before, its inf distance widened the bound to inf and anything passed."""
    model = _linear(torch.tensor([[1e4] * 12, [5e3] * 12, [-1e4] * 12]))
    x = 1.5 + 0.01 * torch.rand(4, 12)
    with torch.no_grad():
        expected = model(x)
    assert torch.isinf(fp16_logits(model, x)).all() and float(expected.abs().max()) > 1.8e5
    runner = _onnx_fp16_runner(model, x[:2], tmp_path)
    torch.testing.assert_close(runner(x), expected, rtol=1e-3, atol=0)  # finite: the CPU upcasts
    overflow = (r"the eager model computed by torch in float16 gives inf or NaN logits on 4 of 4 real images: the "
                r"model overflows float16 \(its fp32 logits reach 1.8\de\+05, float16's largest finite value is "
                r"65504\); keep the fp32 export \(drop --half\), or run the model in bfloat16 on the GPU")
    for export in (runner, lambda t: torch.zeros(len(t), 3)):  # the real export, and one that computes nothing
        with pytest.raises(ExportError, match=overflow):
            verify_export("an fp16 export", model, export, x, rtol=FP16_RTOL, reference=FP16)


def test_an_all_zeros_or_infinite_or_class_swapping_fp16_export_is_refused():
    """Logits (x0, x0 + x1) / 1000 for x in [0.5, 1]: all below 2e-3, so all zeros (and the two classes swapped) lie
    within 1e-2 x max(1, max |logit|) of them; the top-1 check refuses them (eager: class 1, zeros: class 0)."""
    model = _linear(torch.tensor([[1e-3, 0.0], [1e-3, 1e-3]]))
    x = 0.5 + 0.5 * torch.rand(6, 2)
    with torch.no_grad():
        expected = model(x)
    assert (expected.argmax(1) == 1).all() and float(expected.abs().max()) < 2e-3

    def verify(export):
        with torch.no_grad():
            return verify_export("an fp16 export", model, export, x, rtol=FP16_RTOL, reference=FP16)
    with pytest.raises(ExportError, match=r"changes the top-1 class of 6 of 6 real images \(image 0: eager class 1, "
                                          r"the export 0.*where torch's own fp16 logits keep eager's"):
        verify(lambda t: torch.zeros(len(t), 2))
    with pytest.raises(ExportError, match=r"changes the top-1 class of 6 of 6"):
        verify(lambda t: model(t).flip(1))  # the classes swapped: 1e-3 from eager, within the bound
    with pytest.raises(ExportError, match=r"returns inf or NaN logits on 1 of 6 real images: the model overflows"):
        verify(lambda t: torch.cat([torch.full((1, 2), float("nan")), model(t[1:])]) if len(t) > 1 else model(t))
    assert verify(model)["max_abs_diff"] == 0  # eager itself passes


def test_a_correct_fp16_onnx_export_still_passes_and_the_bound_never_widens_to_inf(tmp_path):
    from export.core import logit_bound
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3)).eval()
    x = torch.randn(5, 3, 8, 8)
    report = verify_export("an fp16 export", model, _onnx_fp16_runner(model, x[:2], tmp_path), x, rtol=FP16_RTOL,
                           reference=FP16)
    assert 0 < report["max_abs_diff"] <= report["bound"] < float("inf")
    with pytest.raises(ExportError, match=r"max \|logit difference\| .* > "):  # all zeros: far from logits near 1
        verify_export("zeros", model, lambda t: torch.zeros(len(t), 3), x, rtol=FP16_RTOL, reference=FP16)
    assert logit_bound(2.0, FP16_RTOL, float("inf"), FP16_FACTOR) == logit_bound(2.0, FP16_RTOL) == 0.02
    assert logit_bound(2.0, FP16_RTOL, float("nan"), FP16_FACTOR) == 0.02
    assert logit_bound(2.0, FP16_RTOL, 0.1, FP16_FACTOR) == pytest.approx(0.4)
