"""applications/convert.py and export/core.py: TorchScript and ONNX exports, loaded back in a fresh process.

Checkpoints are built in train.py's format from random weights whose batch-norm statistics are
re-estimated on the training images: logits then have a trained network's scale and differ from image
to image, without the time of a training run.
"""
from __future__ import annotations

import contextlib
import copy
import io
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn

import config
from export.core import (
    ExportError,
    choose_opset,
    export_onnx,
    logit_bound,
    onnx_runner,
    onnxruntime_max_opset,
    torch_onnx_max_opset,
    torchscript_runner,
    verify_export,
)
from helpers import ROOT, calibrated_checkpoint, run_main
from models import create_model

# Runs in a separate process with nothing of the project importable: load an export the way any
# consumer would, report its metadata and logits on the given inputs (batched and the first alone).
LOADER = r"""
import json, sys
import numpy as np, torch
path, inputs, out = sys.argv[1:4]
x = torch.load(inputs)
if path.endswith(".onnx"):
    import onnxruntime as ort
    s = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    meta = {k: json.loads(v) for k, v in s.get_modelmeta().custom_metadata_map.items()}
    name = s.get_inputs()[0].name
    y, y1 = s.run(None, {name: x.numpy()})[0], s.run(None, {name: x[:1].numpy()})[0]
    info = {"batch_axis": s.get_inputs()[0].shape[0], "params": None}
else:
    extra = {"metadata.json": ""}
    m = torch.jit.load(path, _extra_files=extra)
    meta = json.loads(extra["metadata.json"])
    with torch.no_grad():
        y, y1 = m(x).numpy(), m(x[:1]).numpy()
    info = {"batch_axis": None, "params": len(list(m.parameters()))}
np.savez(out, y=y, y1=y1)
project = sorted(m for m in sys.modules
                 if m.split(".")[0] in ("models", "dataloader", "utils", "applications", "config"))
print(json.dumps({"metadata": meta, "project_modules": project, **info}))
"""


def export(ckpt: Path, data: Path, fmt: str, capsys, *extra: str) -> dict:
    """Run ``main.py --jit/--onnx`` and return its printed result."""
    capsys.readouterr()
    assert run_main([f"--{fmt}", "--resume", str(ckpt), "--data", str(data), "-j", "0", *extra]) == 0
    return json.loads(capsys.readouterr().out)


def restored_checkpoint(ckpt: Path, data: Path):
    from applications.setup.common import restore_for_inference
    cfg = config.parse_config(["--evaluation", "--resume", str(ckpt), "--data", str(data), "--device", "cpu"])
    return cfg, restore_for_inference(cfg)


def restore(ckpt: Path, data: Path) -> nn.Module:
    return restored_checkpoint(ckpt, data)[1].model


def eager_logits(ckpt: Path, data: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """Real test images, preprocessed as evaluation does, and the checkpoint's eager logits on them."""
    from applications.convert import sample_images
    cfg, restored = restored_checkpoint(ckpt, data)
    images = sample_images(cfg, restored, "test", count=12)
    with torch.no_grad():
        return images, restored.model(images)


def load_in_fresh_process(model: Path, inputs: torch.Tensor, tmp_path: Path) -> tuple[dict, np.ndarray, np.ndarray]:
    torch.save(inputs, tmp_path / "inputs.pt")
    proc = subprocess.run([sys.executable, "-c", LOADER, str(model), str(tmp_path / "inputs.pt"),
                           str(tmp_path / "out.npz")], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    outputs = np.load(tmp_path / "out.npz")
    return json.loads(proc.stdout.strip().splitlines()[-1]), outputs["y"], outputs["y1"]


@pytest.fixture(scope="module")
def resnet18_exports(tiny_data, tmp_path_factory):
    """A resnet18 checkpoint (16x16, bce head) and both its exports."""
    data = tiny_data["folder"]
    run = tmp_path_factory.mktemp("convert") / "run"
    ckpt = calibrated_checkpoint(run, "resnet18", data, 16, criterion="bce")
    results = {}
    for fmt in ("jit", "onnx"):  # capsys is function-scoped: capture main's printed result by hand
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            assert run_main([f"--{fmt}", "--resume", str(ckpt), "--data", str(data), "-j", "0"]) == 0
        results[fmt] = json.loads(buf.getvalue())
    return {"ckpt": ckpt, "data": data, "run": run, "results": results}


@pytest.mark.parametrize("fmt, filename", [("jit", "model_jit.pt"), ("onnx", "model.onnx")])
def test_export_loads_in_a_fresh_process_with_metadata_and_matches_eager(resnet18_exports, tmp_path, fmt,
                                                                         filename):
    run, result = resnet18_exports["run"], resnet18_exports["results"][fmt]
    path = run / "export" / filename
    assert result["path"] == str(path) and path.is_file()
    assert not list((run / "export").glob("*.unverified"))
    assert result["verified_images"] == 8 and result["max_abs_diff"] <= result["bound"]
    images, expected = eager_logits(resnet18_exports["ckpt"], resnet18_exports["data"])
    assert expected.abs().max() > 0.1 and len(set(expected.argmax(1).tolist())) > 1  # a model worth comparing

    info, y, y1 = load_in_fresh_process(path, images, tmp_path)
    assert info["project_modules"] == []
    bound = logit_bound(float(expected.abs().max()))
    np.testing.assert_allclose(y, expected.numpy(), rtol=0, atol=bound)
    np.testing.assert_allclose(y1, expected[:1].numpy(), rtol=0, atol=bound)
    meta = info["metadata"]
    assert meta["class_names"] == ["0", "1", "7"] and meta["image_size"] == [16, 16]
    assert meta["resize"] == "letterbox" and meta["head"] == "bce" and meta["arch"] == "resnet18"
    assert meta["mean"] == [0.485, 0.456, 0.406] and meta["std"] == [0.229, 0.224, 0.225]
    if fmt == "onnx":
        assert isinstance(info["batch_axis"], str)  # a symbolic, dynamic batch dimension
        assert result["opset"] == min(torch_onnx_max_opset(), onnxruntime_max_opset())
        import onnx
        opsets = {o.domain: o.version for o in onnx.load(str(path)).opset_import}
        assert opsets[""] == result["opset"]
    else:
        assert info["params"] == 0  # frozen: the weights are constants of the graph
        assert result["method"] == "script"


def test_verification_catches_an_export_of_other_weights(resnet18_exports):
    images, _ = eager_logits(resnet18_exports["ckpt"], resnet18_exports["data"])
    runner = torchscript_runner(resnet18_exports["run"] / "export" / "model_jit.pt")
    model = restore(resnet18_exports["ckpt"], resnet18_exports["data"])
    right = verify_export("the right export", model, runner, images)
    assert right["max_abs_diff"] <= right["bound"] and right["bound_from"].startswith("0.001 x max(1, max |logit| ")
    torch.manual_seed(1)
    other = create_model("resnet18", 3).eval()
    with pytest.raises(ExportError, match=r"the wrong export does not reproduce the eager model: max \|logit "
                                          r"difference\| [0-9.e+-]+ > [0-9.e+-]+ on 12 real images \(the bound: "
                                          r"the larger of 0.001 x max\(1, max \|logit\| [0-9.e+-]+\) and 20 x the "
                                          r"eager model's distance from float64 logits\); it is .* from exact"):
        verify_export("the wrong export", other, runner, images)
    with pytest.raises(ExportError, match="returns shape"):
        verify_export("a headless export", model, lambda x: runner(x)[:, :2], images)


def test_verification_fails_wrong_exports_by_far_more_than_the_bound(resnet18_exports, tmp_path):
    """The right ONNX export passes well within the bound; an export whose stem convolution's weight carries
    1% noise, and the right export fed images without the mean/std normalisation, fail, naming the bound,
    by more than 10x it."""
    images, _ = eager_logits(resnet18_exports["ckpt"], resnet18_exports["data"])
    model = restore(resnet18_exports["ckpt"], resnet18_exports["data"])
    onnx = onnx_runner(resnet18_exports["run"] / "export" / "model.onnx")
    right = verify_export("the right export", model, onnx, images)
    assert right["max_abs_diff"] <= right["bound"] / 10
    wrong = copy.deepcopy(model)
    with torch.no_grad():
        noise = torch.randn(wrong.conv1.weight.shape, generator=torch.Generator().manual_seed(0))
        wrong.conv1.weight.mul_(1 + 0.01 * noise)
    export_onnx(wrong, images[:2], tmp_path / "noisy.onnx", {}, choose_opset())
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    wrong_exports = {"the noisy-stem export": onnx_runner(tmp_path / "noisy.onnx"),
                     "the unnormalised export": lambda x: onnx(x * std + mean)}  # what x / 255 alone gives
    for what, runner in wrong_exports.items():
        with pytest.raises(ExportError, match=rf"{what} does not reproduce the eager model: max \|logit difference\| "
                                              r"[0-9.e+-]+ > [0-9.e+-]+ on 12 real images \(the bound: ") as caught:
            verify_export(what, model, runner, images)
        diff, bound = re.search(r"difference\| ([0-9.e+-]+) > ([0-9.e+-]+) on", str(caught.value)).groups()
        assert float(diff) > 10 * float(bound), str(caught.value)


def test_exports_verify_on_the_avx2_kernel_path_too(tiny_data, tmp_path):
    """oneDNN and ATen capped at AVX2 (their environment variables, read when the process starts) compute the
    eager logits with other kernels than the default path: both exports still verify, the log naming the bound."""
    import os

    from helpers import ROOT
    data = tiny_data["folder"]
    ckpt = calibrated_checkpoint(tmp_path / "run", "resnet18", data, 16)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"}
    for fmt in ("jit", "onnx"):
        proc = subprocess.run([sys.executable, str(ROOT / "main.py"), f"--{fmt}", "--resume", str(ckpt), "--data",
                               str(data), "-j", "0"], cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
        assert proc.returncode == 0, proc.stderr[-3000:]
        result = json.loads(proc.stdout)
        assert result["max_abs_diff"] <= result["bound"]
    log = (tmp_path / "run" / "log.txt").read_text()
    for how in ("TorchScript export, as saved", "TorchScript export, optimised on load", "ONNX export, onnxruntime"):
        assert re.search(rf"{how}: max \|logit difference\| from eager [0-9.e+-]+ <= [0-9.e+-]+ \(the bound: 0.001 "
                         r"x max\(1, max \|logit\| [0-9.e+-]+\)\) on 8 images", log), how


@pytest.mark.parametrize("arch, size, method", [
    ("efficientnet-b0", 32, "trace"),  # memory-efficient swish must be switched off, or tracing fails
    ("timm/resnet18", 16, "script"),
    pytest.param("resnest50", 32, "trace", marks=pytest.mark.slow),
])
def test_every_family_exports_both_ways(tiny_data, tmp_path, capsys, arch, size, method):
    data = tiny_data["folder"]
    ckpt = calibrated_checkpoint(tmp_path / "run", arch, data, size)
    jit = export(ckpt, data, "jit", capsys)
    onnx_result = export(ckpt, data, "onnx", capsys)
    assert jit["method"] == method
    for result in (jit, onnx_result):  # within the bound the export was verified against
        assert result["max_abs_diff"] <= result["bound"]
    assert jit["max_abs_logit"] > 0.1  # not a model whose outputs are all ~0
    assert (tmp_path / "run/export/model_jit.pt").is_file() and (tmp_path / "run/export/model.onnx").is_file()


def test_a_path_that_fails_says_so_and_suggests_the_other(tiny_data, tmp_path, caplog):
    # timm's ViT uses scaled_dot_product_attention, which ONNX has only from opset 14 on.
    data = tiny_data["folder"]
    ckpt = calibrated_checkpoint(tmp_path / "run", "timm/vit_tiny_patch16_224", data, 224)
    assert run_main(["--onnx", "--opset", "13", "--resume", str(ckpt), "--data", str(data), "-j", "0"]) == 1
    message = caplog.text
    assert "timm/vit_tiny_patch16_224 (timm family) cannot be exported to ONNX" in message
    assert "scaled_dot_product_attention" in message and "try --jit instead" in message
    assert not (tmp_path / "run/export/model.onnx").exists()


# ---- exports killed half-way (#25 item 4) -----------------------------------------------------------

def _kill_when_it_appears(args: list[str], export: Path, is_temporary, tries: int = 3) -> Path:
    """Start ``main.py ARGS`` and SIGKILL it as soon as an entry for which ``is_temporary(entry)`` holds
    appears in ``export`` (polled); try again when the process ended before one was seen."""
    import os
    import signal
    import time

    from helpers import ROOT
    for _ in range(tries):
        proc = subprocess.Popen([sys.executable, str(ROOT / "main.py"), *args], cwd=ROOT, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, env={**os.environ, "OMP_NUM_THREADS": "1"})
        deadline = time.time() + 300
        while proc.poll() is None and time.time() < deadline:
            found = [p for p in export.iterdir() if is_temporary(p)] if export.is_dir() else []
            if found:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                return found[0]
            time.sleep(0.002)
        proc.kill()
        proc.wait()
    raise AssertionError(f"main.py {' '.join(args)} never showed a temporary in {export}")


def test_a_rerun_removes_what_killed_exports_left_and_keeps_a_running_ones(tiny_data, tmp_path):
    """SIGKILL during the ONNX export (its temporary file) and during the int8 quantization (its scratch
    folder): both are left in the export folder, and the next export removes them, but not the temporary
    of a process that is still running."""
    import os
    data = tiny_data["folder"]
    ckpt = calibrated_checkpoint(tmp_path / "run", "resnet18", data, 16)
    export = tmp_path / "run" / "export"
    onnx = ["--onnx", "--resume", str(ckpt), "--data", str(data), "-j", "0"]
    int8 = [*onnx, "--quantize", "int8", "--calib_images", "16", "--max_accuracy_drop", "100"]
    left = _kill_when_it_appears(onnx, export, lambda p: p.is_file() and "tmp" in p.name)
    assert left.is_file() and left.stat().st_size > 0
    left_too = _kill_when_it_appears(int8, export, lambda p: p.is_dir())  # after its fp32 export: left is gone
    assert left_too.is_dir() and not left.exists(), (left, left_too)
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        running = export / f".model.onnx.unverified.tmp-{live.pid}"  # another export still writing
        running.write_bytes(b"being written")
        proc = subprocess.run([sys.executable, "main.py", *int8], cwd=ROOT,
                              capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert sorted(p.name for p in export.iterdir()) == sorted(["model.onnx", "model.int8.onnx", running.name])
        assert f"removed 1 temporary file(s) left by an interrupted save in {export}: {left_too.name}" in proc.stderr
    finally:
        live.kill()
        live.wait()
