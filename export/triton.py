"""A Triton Inference Server model repository around a verified ONNX export (``main.py --triton``).

    <repository>/<name>/config.pbtxt     backend onnxruntime, inputs/outputs, dynamic batching
    <repository>/<name>/labels.txt       one class name a line, in output order (the output's label_filename)
    <repository>/<name>/1/model.onnx     the ONNX export (version 1), batch axis dynamic

The names, element types and shapes written into ``config.pbtxt`` are read from the ONNX file itself, so the
configuration cannot disagree with the graph Triton loads: ``dims`` leave out the batch axis, which Triton
adds (``max_batch_size`` > 0). The labels file lets Triton's classification extension answer class names
(``class_count`` in a request). Preprocessing (resize, mean/std) stays the client's, as for every export:
the ONNX file's metadata says how.
"""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Sequence

from utils.atomic import replace_folder, temp_dir, write_text_atomic

CONFIG_FILE, LABELS_FILE, VERSION = "config.pbtxt", "labels.txt", "1"
# ONNX TensorProto element types -> Triton data types (those an image classifier's graph may carry)
TRITON_TYPES = {1: "TYPE_FP32", 10: "TYPE_FP16", 11: "TYPE_FP64", 16: "TYPE_BF16", 2: "TYPE_UINT8", 3: "TYPE_INT8",
                6: "TYPE_INT32", 7: "TYPE_INT64"}
QUEUE_DELAY_US = 100  # how long the batcher waits for more requests to fill a preferred batch size


def preferred_batch_sizes(max_batch_size: int) -> list[int]:
    """The batch sizes the dynamic batcher aims for: half the largest and the largest (one size for 1)."""
    return sorted({max(1, max_batch_size // 2), max_batch_size})


def _tensors(values, role: str, extra: str = "") -> str:
    """``input [...]`` / ``output [...]`` entries for ONNX value infos (batch axis dropped from ``dims``)."""
    entries = []
    for value in values:
        tensor = value.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else -1 for d in tensor.shape.dim][1:]
        if tensor.elem_type not in TRITON_TYPES:
            raise ValueError(f"{role} {value.name!r} has ONNX element type {tensor.elem_type}, which this writer "
                             f"does not map to a Triton type")
        entries.append(f'  {{\n    name: "{value.name}"\n    data_type: {TRITON_TYPES[tensor.elem_type]}\n'
                       f'    dims: [ {", ".join(map(str, dims))} ]\n{extra}  }}')
    return f"{role} [\n" + ",\n".join(entries) + "\n]\n"


def triton_config(onnx_path: str | Path, name: str, max_batch_size: int) -> str:
    """The ``config.pbtxt`` text (protobuf text format of Triton's ModelConfig) for the ONNX file."""
    import onnx
    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    initializers = {i.name for i in graph.initializer}
    inputs = [v for v in graph.input if v.name not in initializers]
    preferred = ", ".join(map(str, preferred_batch_sizes(max_batch_size)))
    return (f'name: "{name}"\nbackend: "onnxruntime"\nmax_batch_size: {max_batch_size}\n'
            + _tensors(inputs, "input")
            + _tensors(graph.output, "output", f'    label_filename: "{LABELS_FILE}"\n')
            + f"dynamic_batching {{\n  preferred_batch_size: [ {preferred} ]\n"
              f"  max_queue_delay_microseconds: {QUEUE_DELAY_US}\n}}\n")


def write_repository(onnx_path: str | Path, repository: str | Path, name: str, class_names: Sequence[str],
                     max_batch_size: int) -> Path:
    """Write ``<repository>/<name>/`` around a copy of ``onnx_path``: built in a scratch folder beside it and
    renamed into place (a model folder from an earlier run is replaced), so Triton never sees half of one.
    Returns the model folder."""
    target = Path(repository) / name
    with temp_dir(target) as scratch:
        staged = scratch / name
        (staged / VERSION).mkdir(parents=True)
        shutil.copyfile(onnx_path, staged / VERSION / "model.onnx")
        write_text_atomic(staged / LABELS_FILE, "".join(f"{c}\n" for c in class_names))
        write_text_atomic(staged / CONFIG_FILE, triton_config(staged / VERSION / "model.onnx", name, max_batch_size))
        replace_folder(staged, target)
    return target
