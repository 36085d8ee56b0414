"""Multi-label exports (issue #29): a multi-label checkpoint whose per-class decision thresholds are not 0.5,
exported to TorchScript, ONNX (fp32 and int8) and OpenVINO, carries its task and thresholds, the int8 guard
measures mAP, and the demo, alone in a fresh process, gives each image the label set the project's model gives
it at those thresholds (``utils.multilabel.label_sets`` on the eager model's probabilities)."""
from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch

import config
from applications.convert import labelled_batches
from applications.setup.common import restore_for_inference
from dataloader.digits import make_mosaic
from e2e.quant_fixtures import run_main_json
from export.core import load_torchscript, read_onnx_metadata
from helpers import run_demo, run_main
from utils.checkpoint import load_checkpoint, save_checkpoint
from utils.multilabel import average_precision, label_sets, mean_average_precision

SIZES = {"train": 40, "val": 12, "test": 12}
# least distance of a test probability from its class's threshold; verified exports' logits differ from eager
# by < 1e-3 x max(1, max |logit|), their probabilities by a quarter of that (measured: ~1e-7)
MARGIN = 5e-4


def widest_gap_thresholds(probs: np.ndarray) -> list[float]:
    """Per class, the midpoint of the widest gap between its sorted probabilities: a threshold that splits the
    images and that no probability comes near."""
    chosen = []
    for column in np.sort(probs, axis=0).T:
        i = int(np.argmax(np.diff(column)))
        chosen.append(float((column[i] + column[i + 1]) / 2))
    return chosen


@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    """A simple_cnn trained an epoch on tiny digit mosaics, saved again as ``tuned.pth`` with thresholds that
    flip labels against 0.5; the test split's images, targets and the eager model's probabilities."""
    root = tmp_path_factory.mktemp("mlexport")
    data = make_mosaic(root / "mosaic", SIZES)
    with contextlib.redirect_stdout(io.StringIO()):
        assert run_main(["--train", "--multi_label", "--dataset", "csv", "--data", str(data), "--arch", "simple_cnn",
                         "--image_size", "32", "32", "-b", "8", "-j", "0", "--epochs", "1", "--lr", "0.05",
                         "--warmup", "0", "--output", str(root / "out"), "--no_progress"]) == 0
    run = root / "out" / "simple_cnn" / "default"
    cfg = config.parse_config(["--onnx", "--resume", str(run / "checkpoints" / "best.pth"), "--data", str(data),
                               "--dataset", "csv", "--multi_label", "-j", "0"])
    restored = restore_for_inference(cfg, torch.device("cpu"))
    assert restored.spec.multi_label
    images, targets = map(torch.cat, zip(*labelled_batches(cfg, restored, "test", None)))
    with torch.no_grad():
        probs = restored.model.eval()(images).sigmoid().numpy()
    thresholds = widest_gap_thresholds(probs)
    ckpt = load_checkpoint(run / "checkpoints" / "best.pth")
    ckpt["model_spec"]["thresholds"] = thresholds
    save_checkpoint(ckpt, run / "checkpoints" / "tuned.pth")
    expected = label_sets(probs, thresholds)
    assert expected != label_sets(probs, 0.5)  # the thresholds matter
    assert len({len(s) for s in expected}) > 1  # label sets of several sizes
    assert float(np.abs(probs - np.asarray(thresholds)).min()) > MARGIN
    paths = sorted((data / "images" / "test").glob("*.png"))
    assert len(paths) == len(probs) == SIZES["test"]  # test.csv lists them in name order
    return {"data": data, "run": run, "ckpt": run / "checkpoints" / "tuned.pth", "thresholds": thresholds,
            "probs": probs, "targets": targets.numpy(), "expected": expected, "paths": paths,
            "names": list(restored.spec.class_names)}


def _demo_rows(model: Path, tuned, cwd: Path, *extra: str) -> tuple[list[str], str]:
    proc, imported = run_demo([str(model), str(tuned["data"] / "images" / "test"), *extra], cwd=cwd)
    assert proc.returncode == 0 and imported == [], proc.stderr[-3000:]
    return proc.stdout.splitlines(), proc.stderr


def _assert_demo_label_sets(model: Path, tuned, cwd: Path) -> None:
    rows, _ = _demo_rows(model, tuned, cwd, "--json")
    rows = [json.loads(line) for line in rows]
    assert [Path(r["path"]).resolve() for r in rows] == [p.resolve() for p in tuned["paths"]]
    names = tuned["names"]
    for row, want, probs in zip(rows, tuned["expected"], tuned["probs"]):
        assert [label["name"] for label in row["labels"]] == [names[i] for i in want], (model.name, row["path"])
        np.testing.assert_allclose([label["score"] for label in row["labels"]], probs[want], rtol=0, atol=1e-5)
        assert list(row["scores"]) == names
        np.testing.assert_allclose(list(row["scores"].values()), probs, rtol=0, atol=1e-5)


def test_exports_carry_the_task_and_thresholds_and_the_demo_gives_the_models_label_sets(tuned, tmp_path):
    with contextlib.redirect_stdout(io.StringIO()):
        for mode in ("--jit", "--onnx"):
            assert run_main([mode, "--resume", str(tuned["ckpt"]), "--data", str(tuned["data"]), "--dataset", "csv",
                             "-j", "0"]) == 0
    export = tuned["run"] / "export"
    metas = {"model_jit.pt": load_torchscript(export / "model_jit.pt", optimize=False)[1],
             "model.onnx": read_onnx_metadata(export / "model.onnx")}
    for name, meta in metas.items():
        assert meta["multi_label"] is True and meta["head"] == "bce", name
        assert meta["thresholds"] == pytest.approx(tuned["thresholds"], rel=0, abs=1e-12), name
        _assert_demo_label_sets(export / name, tuned, tmp_path)
    # --predict on the same images, with the same checkpoint: the same label sets as the demo on the export
    with contextlib.redirect_stdout(io.StringIO()):
        assert run_main(["--predict", str(tuned["data"] / "images" / "test"), "--resume", str(tuned["ckpt"]),
                         "-j", "0"]) == 0
    predicted = json.loads((tuned["run"] / "predict" / "test" / "predictions.json").read_text())
    demo = [json.loads(line) for line in _demo_rows(export / "model.onnx", tuned, tmp_path, "--json")[0]]
    sets = {Path(r["path"]).name: [label["name"] for label in r["labels"]] for r in demo}
    assert {Path(r["path"]).name: [label["name"] for label in r["labels"]] for r in predicted} == sets
    assert len(sets) == len(tuned["paths"])
    lines, stderr = _demo_rows(export / "model.onnx", tuned, tmp_path)  # the printed table: the label sets
    assert "12 image(s) classified with model.onnx (onnxruntime)" in stderr
    for line, want in zip(lines, tuned["expected"]):
        shown = line.split(": ", 1)[1]
        assert ([pair.split()[0] for pair in shown.split(", ")] if want else [shown]) == (
            [tuned["names"][i] for i in want] or ["(no label)"])


@pytest.mark.slow
def test_int8_guard_measures_map_and_openvino_carries_the_thresholds(tuned, tmp_path):
    base = ["--resume", str(tuned["ckpt"]), "--data", str(tuned["data"]), "--dataset", "csv", "-j", "0"]
    int8 = run_main_json(["--onnx", "--quantize", "int8", *base, "--max_accuracy_drop", "100"])["int8"]
    reference = mean_average_precision(average_precision(tuned["probs"], tuned["targets"] > 0.5))
    assert int8["images"] == 12 and "fp32_top1" not in int8 and "map_drop" in int8
    assert int8["fp32_map"] == pytest.approx(reference, abs=1e-6)  # the guard's mAP is the eager model's
    assert int8["map_drop"] == pytest.approx(int8["fp32_map"] - int8["int8_map"])
    export = tuned["run"] / "export"
    meta = read_onnx_metadata(export / "model.int8.onnx")
    assert meta["multi_label"] is True and meta["thresholds"] == pytest.approx(tuned["thresholds"], rel=0, abs=1e-12)
    assert meta["quantization"]["precision"] == "int8"
    run_main_json(["--openvino", *base])
    import openvino as ov
    xml = ov.Core().read_model(str(export / "model.xml"))
    meta = json.loads(xml.get_rt_info(["classifier", "metadata"]).astype(str))
    assert meta["multi_label"] is True and meta["thresholds"] == pytest.approx(tuned["thresholds"], rel=0, abs=1e-12)
    _assert_demo_label_sets(export / "model.xml", tuned, tmp_path)
