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
