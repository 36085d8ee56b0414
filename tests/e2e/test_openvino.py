"""--openvino [--quantize int8] (export/openvino.py, applications/convert.py) and the demo's OpenVINO backend:
the IR loads in OpenVINO in a separate process and matches eager; the int8 IR passes the accuracy guard
and carries its settings; the demo's three backends give --evaluation's predictions on the digits."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import config
from applications.convert import sample_images
from applications.setup.common import restore_for_inference
from e2e.quant_fixtures import evaluation_predictions, run_main_json, trained_once
from export.core import logit_bound
from helpers import ROOT, demo_predictions

# A separate process with nothing of the project importable: OpenVINO alone reads the IR and its metadata.
LOADER = r"""
import json, sys
import numpy as np, openvino as ov
path, inputs, out = sys.argv[1:4]
core = ov.Core()
model = core.read_model(path)
compiled = core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
x = np.load(inputs)
np.savez(out, y=compiled(x)[0], y1=compiled(x[:1])[0])
meta = json.loads(model.get_rt_info(["classifier", "metadata"]).astype(str))
project = sorted(m for m in sys.modules
                 if m.split(".")[0] in ("models", "dataloader", "utils", "applications", "config", "export"))
print(json.dumps({"metadata": meta, "project_modules": project,
                  "batch_axis": str(model.inputs[0].get_partial_shape()[0])}))
"""


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    return trained_once(tmp_path_factory)


@pytest.mark.slow
def test_openvino_ir_loads_in_a_separate_process_and_matches_eager(trained, tmp_path):
    summary = run_main_json(["--openvino", "--resume", str(trained["ckpt"])])
    xml = trained["export"] / "model.xml"
    assert summary["path"] == str(xml) and xml.is_file() and xml.with_suffix(".bin").is_file()
    assert not list(trained["export"].glob("*unverified*"))
    cfg, given = config.parse_command_line(["--evaluation", "--resume", str(trained["ckpt"]), "--device", "cpu"])
    config.check_files(cfg, given)  # as main.py does: no --data given, so the checkpoint's own data
    restored = restore_for_inference(cfg)
    images = sample_images(cfg, restored, "test", count=16)
    np.save(tmp_path / "x.npy", images.numpy())
    proc = subprocess.run([sys.executable, "-c", LOADER, str(xml), str(tmp_path / "x.npy"), str(tmp_path / "y.npz")],
                          capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    info = json.loads(proc.stdout.strip().splitlines()[-1])
    assert info["project_modules"] == [] and info["batch_axis"] == "?"
    assert info["metadata"]["class_names"] == ["0", "1", "7"] and info["metadata"]["image_size"] == [32, 32]
    assert "quantization" not in info["metadata"]
    with torch.no_grad():
        expected = restored.model(images).numpy()
    got = np.load(tmp_path / "y.npz")
    # fp32 all the way (weights not compressed to fp16, no bf16 inference: those differ by 1e-2 and more)
    bound = logit_bound(float(np.abs(expected).max()))
    np.testing.assert_allclose(got["y"], expected, rtol=0, atol=bound)
    np.testing.assert_allclose(got["y1"], expected[:1], rtol=0, atol=bound)


@pytest.mark.slow
def test_openvino_int8_passes_the_guard_and_the_three_demo_backends_agree_on_the_digits(trained, tmp_path):
    summary = run_main_json(["--openvino", "--quantize", "int8", "--resume", str(trained["ckpt"]),
                             "--calib_images", "90", "--calib_method", "minmax",
                             # the tiny 70%-top-1 test model has borderline images: NNCF flips 2 of 60 (3.3 points)
                             "--max_accuracy_drop", "5"])
    int8 = summary["int8"]
    xml = trained["export"] / "model.int8.xml"
    assert int8["path"] == str(xml) and xml.is_file() and xml.with_suffix(".bin").is_file()
    assert int8["images"] == 60 and int8["fp32_top1"] - int8["int8_top1"] <= 5.0
    assert int8["calib_method"] == "minmax" and int8["calib_images"] == 90 and "nncf" in int8["tool"]
    import openvino as ov
    model = ov.Core().read_model(str(xml))
    meta = json.loads(model.get_rt_info(["classifier", "metadata"]).astype(str))
    assert meta["quantization"]["calib_method"] == "minmax" and meta["class_names"] == ["0", "1", "7"]
    assert any(op.get_type_name() == "FakeQuantize" for op in model.get_ops())
    with __import__("contextlib").redirect_stdout(__import__("io").StringIO()):
        from helpers import run_main
        assert run_main(["--jit", "--resume", str(trained["ckpt"])]) == 0
        assert run_main(["--onnx", "--resume", str(trained["ckpt"])]) == 0
    expected = evaluation_predictions(trained)
    test = trained["data"] / "test"
    for name in ("model_jit.pt", "model.onnx", "model.xml"):  # auto-detected backends: .pt, .onnx, .xml
        assert demo_predictions(trained["export"] / name, test, tmp_path) == expected, name
    got = demo_predictions(xml, test, tmp_path)
    agreement = 100.0 * np.mean([got[k] == expected[k] for k in expected])
    assert agreement == pytest.approx(int8["agreement"])


# ---- the IR's two files are one unit (#25 item 4) ---------------------------------------------------

# In its own process (OpenVINO kept out of the test process): a re-export of IR b over IR a, stopped between
# its two renames (the staging .bin is gone, so move_ir's second rename fails after its first), then what our
# loaders say of that pair and of the reverse mix (a's .xml, b's .bin); whole pairs load.
MIXED_PAIRS = r"""
import json, shutil, sys
from pathlib import Path
import torch
from export.openvino import move_ir, openvino_runner, read_ir
a, b, work = map(Path, sys.argv[1:4])
for whole in (a, b):
    assert openvino_runner(whole / "model.xml")(torch.zeros(2, 3, 16, 16)).shape == (2, 3)
killed = shutil.copytree(a, work / "killed")
shutil.copyfile(b / "model.xml", killed / "model.unverified.xml")
try:
    move_ir(killed / "model.unverified.xml", killed / "model.xml")
except FileNotFoundError:
    pass
reverse = shutil.copytree(b, work / "reverse")
shutil.copyfile(a / "model.xml", reverse / "model.xml")
out = {"xml_moved": (killed / "model.xml").read_bytes() == (b / "model.xml").read_bytes()}
for name, folder in (("killed", killed), ("reverse", reverse)):
    for loader in (read_ir, openvino_runner):
        try:
            loader(folder / "model.xml")
            out[f"{name} {loader.__name__}"] = "loaded"
        except Exception as e:
            out[f"{name} {loader.__name__}"] = f"{type(e).__name__}: {e}"
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def two_irs(tiny_data, tmp_path_factory) -> tuple[Path, Path]:
    """The export folders of two 16 px resnet18s with weights of the same shapes, a (random, seed 0) and b (its
    fc layer negated), each written by main.py --openvino."""
    from helpers import calibrated_checkpoint
    from utils.checkpoint import load_checkpoint, save_checkpoint
    folders = []
    for name in ("a", "b"):
        ckpt = calibrated_checkpoint(tmp_path_factory.mktemp("ir") / name, "resnet18", tiny_data["folder"], 16)
        if name == "b":
            state = load_checkpoint(ckpt)
            state["model"]["fc.weight"] = -state["model"]["fc.weight"]
            save_checkpoint(state, ckpt)
        run_main_json(["--openvino", "--resume", str(ckpt), "--data", str(tiny_data["folder"]), "-j", "0"])
        folders.append(ckpt.parent.parent / "export")
    return folders[0], folders[1]


def test_an_ir_beside_the_bin_of_another_export_is_refused_by_our_loaders(two_irs, tmp_path):
    a, b = two_irs
    proc = subprocess.run([sys.executable, "-c", MIXED_PAIRS, str(a), str(b), str(tmp_path)], capture_output=True,
                          text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out.pop("xml_moved")  # the .xml is renamed first: a kill between the renames leaves the new .xml
    for name, message in out.items():
        folder = tmp_path / name.split()[0]
        assert message.startswith(f"ExportError: {folder / 'model.bin'} is not the weights file of "
                                  f"{folder / 'model.xml'} (its sha256 is "), (name, message)
        assert "an export was interrupted between writing the two; export again" in message, (name, message)
