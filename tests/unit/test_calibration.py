"""Calibration and "unknown" (issue #30, items 6 and 8): the temperature fit, ECE/NLL/Brier against hand
computations, the risk-coverage numbers, and the temperature and ``--reject_below`` through --calibrate,
--evaluation, --predict, the export metadata and the demo."""
from __future__ import annotations

import contextlib
import csv
import io
import json
import math

import numpy as np
import pytest
import torch
import torch.nn as nn
from PIL import Image

from applications.calibrate import calibrated_path
from export.core import export_metadata, save_torchscript, to_torchscript
from helpers import calibrated_checkpoint, demo_module, multi_label_checkpoint, read_json, run_main
from models.spec import ModelSpec
from utils.calibration import (
    calibration_report,
    expected_calibration_error,
    fit_temperature,
    risk_coverage,
    selective_accuracy,
)
from utils.checkpoint import load_checkpoint
from utils.metrics import probabilities


# ------------------------------------------------------------------------------------------- the numbers
@pytest.mark.parametrize("true_temperature", [0.5, 1.0, 2.5])
def test_a_temperature_fitted_on_logits_made_with_a_known_temperature_comes_back_within_5_percent(true_temperature):
    # labels drawn from softmax(z): z is calibrated, so logits z * T are calibrated by dividing by T
    g = torch.Generator().manual_seed(0)
    z = torch.randn(20000, 10, generator=g) * 2.0
    labels = torch.multinomial(z.softmax(dim=1), 1, generator=g).squeeze(1)
    fitted = fit_temperature(z * true_temperature, labels)
    assert fitted == pytest.approx(true_temperature, rel=0.05)
    # it is the NLL's minimum: a little off either way is worse
    nll = lambda t: float(torch.nn.functional.cross_entropy(z * true_temperature / t, labels))  # noqa: E731
    assert nll(fitted) < min(nll(fitted * 0.97), nll(fitted * 1.03))


# Five 2-class images: (probabilities, label). Top probability, right?, 15-bin bin (ceil(15 p) - 1):
# 0.9 yes bin 13 | 0.92 no bin 13 | 0.75 yes bin 11 | 0.62 no bin 9 | 0.55 yes bin 8
PROBS = torch.tensor([[0.9, 0.1], [0.08, 0.92], [0.75, 0.25], [0.62, 0.38], [0.45, 0.55]])
LABELS = torch.tensor([0, 0, 0, 1, 1])


def test_ece_nll_and_brier_against_a_hand_computation():
    report = calibration_report(PROBS, LABELS)
    # bin 13: accuracy 1/2, confidence 0.91 (gap 0.41, 2 images); bin 11: |1 - 0.75|; bin 9: |0 - 0.62|;
    # bin 8: |1 - 0.55|
    assert report["ece"] == pytest.approx((2 * 0.41 + 0.25 + 0.62 + 0.45) / 5)
    assert report["nll"] == pytest.approx(-(math.log(0.9) + math.log(0.08) + math.log(0.75) + math.log(0.38)
                                            + math.log(0.55)) / 5)
    assert report["brier"] == pytest.approx((2 * 0.1 ** 2 + 2 * 0.92 ** 2 + 2 * 0.25 ** 2 + 2 * 0.62 ** 2
                                             + 2 * 0.45 ** 2) / 5)
    bins = report["reliability"]
    assert report["bins"] == 15 and sum(bins["count"]) == 5 and bins["count"][13] == 2
    assert bins["accuracy"][13] == pytest.approx(0.5) and bins["confidence"][13] == pytest.approx(0.91)
    # one bin: |accuracy - mean confidence| over all; a confidence of exactly 1 lands in the last bin
    assert expected_calibration_error(np.array([0.9, 0.92]), np.array([1, 0]), bins=1) == pytest.approx(0.41)
    assert expected_calibration_error(np.array([1.0]), np.array([1]), bins=15) == pytest.approx(0.0)


def test_risk_coverage_and_selective_accuracy_by_hand():
    confidence, correct = np.array([0.9, 0.92, 0.75, 0.62, 0.55]), np.array([1, 0, 1, 0, 1])
    coverage, risk, thresholds = risk_coverage(confidence, correct)
    # kept most confident first: 0.92 (wrong), 0.9, 0.75, 0.62 (wrong), 0.55
    np.testing.assert_allclose(coverage, [0.2, 0.4, 0.6, 0.8, 1.0])
    np.testing.assert_allclose(risk, [1.0, 0.5, 1 / 3, 0.5, 0.4])
    np.testing.assert_allclose(thresholds, [0.92, 0.9, 0.75, 0.62, 0.55])
    picked = selective_accuracy(confidence, correct, 0.7)  # 0.9, 0.92, 0.75 answered: 2 of 3 right
    assert picked["accepted"] == 3 and picked["coverage"] == pytest.approx(60.0)
    assert picked["accuracy"] == pytest.approx(200 / 3)
    assert selective_accuracy(confidence, correct, 0.95)["accuracy"] is None  # nothing answered
    assert selective_accuracy(confidence, correct, 0.55)["coverage"] == pytest.approx(100.0)  # >= keeps it


def test_probabilities_and_the_spec_carry_the_temperature():
    logits = torch.tensor([[2.0, 0.0, -1.0]])
    np.testing.assert_allclose(probabilities(logits, "softmax", 2.0), (logits / 2).softmax(dim=1), rtol=1e-6)
    assert torch.equal(probabilities(logits), logits.softmax(dim=1))
    spec = ModelSpec("simple_cnn", ["a", "b"], (8, 8), (0.5,) * 3, (0.25,) * 3)
    assert spec.temperature == 1.0 and ModelSpec.from_dict({**spec.to_dict(), "temperature": 1.5}).temperature == 1.5
    old = {k: v for k, v in spec.to_dict().items() if k != "temperature"}  # a spec saved before calibration
    assert ModelSpec.from_dict(old).temperature == 1.0
    for bad in (0.0, -1.0, float("inf"), float("nan")):
        with pytest.raises(ValueError, match="is not a positive number"):
            ModelSpec.from_dict({**spec.to_dict(), "temperature": bad})


# ------------------------------------------------------------------------------------ export and the demo
class _ChannelMeans(nn.Module):
    """The mean of each input channel as that class's logit: a model whose outputs a test sets by colour."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3))


def test_the_demo_applies_the_exported_temperature_and_answers_unknown(tmp_path, capsys):
    demo = demo_module()
    spec = ModelSpec("simple_cnn", ["r", "g", "b"], (8, 8), (0.5,) * 3, (0.25,) * 3, temperature=2.5)
    module, _ = to_torchscript(_ChannelMeans().eval(), torch.zeros(1, 3, 8, 8))
    path = save_torchscript(module, tmp_path / "model_jit.pt", export_metadata(spec))
    assert demo.Classifier(path).temperature == 2.5
    Image.new("RGB", (8, 8), (255, 0, 64)).save(tmp_path / "a.png")  # logits (x / 255 - 0.5) / 0.25
    Image.new("RGB", (8, 8), (140, 128, 128)).save(tmp_path / "b.png")  # nearly uniform: unsure
    logits = torch.tensor([[2.0, -2.0, (64 / 255 - 0.5) / 0.25], [(140 / 255 - 0.5) / 0.25, (128 / 255 - 0.5) / 0.25,
                                                                   (128 / 255 - 0.5) / 0.25]])
    expected = (logits / 2.5).softmax(dim=1)
    assert demo.main([str(path), str(tmp_path), "--json", "--reject_below", "0.5"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    np.testing.assert_allclose([r["probabilities"] for r in rows], expected, rtol=1e-5)
    assert expected[0].max() > 0.5 > expected[1].max()  # a.png's top is answered, b.png's is not
    assert [r["answer"] for r in rows] == ["r", "unknown"]
    assert demo.main([str(path), str(tmp_path), "--reject_below", "0.5"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(f"{tmp_path / 'a.png'}: r ")
    assert lines[1].startswith(f"{tmp_path / 'b.png'}: unknown (r ")
    # an export from before calibration divides by 1; a broken temperature is one clear error
    plain = save_torchscript(module, tmp_path / "plain.pt", {k: v for k, v in export_metadata(spec).items()
                                                             if k != "temperature"})
    assert demo.Classifier(plain).temperature == 1.0
    broken = save_torchscript(module, tmp_path / "broken.pt", {**export_metadata(spec), "temperature": 0})
    with pytest.raises(ValueError, match="its temperature metadata is not a positive number"):
        demo.Classifier(broken)


# ------------------------------------------------------------------------- the modes on a real checkpoint
def main_result(args: list[str]) -> dict:
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert run_main(args) == 0
    return json.loads(buf.getvalue())


@pytest.fixture(scope="module")
def calibrated(tiny_data, tmp_path_factory):
    """A random simple_cnn checkpoint of the tiny digits, --calibrate'd: (original, calibrated, its summary)."""
    checkpoint = calibrated_checkpoint(tmp_path_factory.mktemp("calib") / "run", "simple_cnn", tiny_data["folder"], 16)
    summary = main_result(["--calibrate", "--resume", str(checkpoint), "--data", str(tiny_data["folder"]), "-j", "0",
                           "--no_progress"])
    return checkpoint, calibrated_path(checkpoint), summary


def test_calibrate_writes_a_checkpoint_beside_the_original_with_the_fitted_temperature(calibrated):
    original, path, summary = calibrated
    assert path == original.with_name("best_calibrated.pth") and summary["checkpoint"] == str(path)
    ckpt = load_checkpoint(path)
    assert ckpt["model_spec"]["temperature"] == pytest.approx(summary["temperature"])
    assert ckpt["calibration"]["split"] == "val" and ckpt["calibration"]["count"] == 12
    assert summary["nll_after"] <= summary["nll_before"] + 1e-9  # the fit minimises the val NLL
    for key, value in load_checkpoint(original)["model"].items():  # the weights are the original's
        assert torch.equal(ckpt["model"][key], value)


def test_evaluation_reports_calibration_at_the_checkpoints_temperature(calibrated, tiny_data, tmp_path):
    original, path, summary = calibrated
    base = ["--evaluation", "--data", str(tiny_data["folder"]), "--eval_split", "val", "-j", "0", "--no_progress"]
    before = main_result([*base, "--resume", str(original)])
    after = main_result([*base, "--resume", str(path), "--out", str(tmp_path / "preds.json"),
                         "--reject_below", "0.4"])
    # on the split it was fitted on, the report's numbers are the fit's
    assert before["top1"] == after["top1"] and after["temperature"] == pytest.approx(summary["temperature"])
    assert before["nll"] == pytest.approx(summary["nll_before"], rel=1e-4)
    assert after["nll"] == pytest.approx(summary["nll_after"], rel=1e-4)
    assert after["ece"] == pytest.approx(summary["ece_after"], abs=1e-5)
    rows = read_json(tmp_path / "preds.json")
    probs = torch.tensor([r["scores"] for r in rows], dtype=torch.float64)
    labels = torch.tensor([r["label"] for r in rows])
    assert after["ece"] == pytest.approx(calibration_report(probs, labels)["ece"], abs=1e-5)
    picked = selective_accuracy(probs.max(dim=1).values.numpy(), (probs.argmax(dim=1) == labels).numpy(), 0.4)
    assert after["selective_coverage"] == pytest.approx(picked["coverage"])
    report = path.parent.parent / "eval_val"
    metrics = read_json(report / "metrics.json")
    assert metrics["calibration"]["bins"] == 15 and metrics["selective"]["reject_below"] == 0.4
    assert (report / "reliability.png").stat().st_size and (report / "risk_coverage.png").stat().st_size


def predicted_rows(checkpoint, source, *extra: str) -> tuple[dict, list[dict[str, str]]]:
    """--predict's summary and predictions.csv rows (every class: --topk 3)."""
    result = main_result(["--predict", str(source), "--resume", str(checkpoint), "-j", "0", "--no_progress",
                          "--topk", "3", *extra])
    with open(result["predictions"], newline="") as f:
        return result, list(csv.DictReader(f))


def test_predict_answers_unknown_below_reject_below_at_the_calibrated_confidence(calibrated, tiny_data):
    original, path, summary = calibrated
    source = tiny_data["folder"] / "test"
    _, raw = predicted_rows(original, source)
    _, plain = predicted_rows(path, source)
    # the calibrated probabilities: softmax(log p_raw / T) = softmax(logits / T)
    for before, after in zip(raw, plain):
        p_raw = {before[f"class_{k}"]: float(before[f"prob_{k}"]) for k in (1, 2, 3)}
        names = sorted(p_raw)
        expected = (torch.tensor([math.log(p_raw[n]) for n in names]) / summary["temperature"]).softmax(dim=0)
        got = {after[f"class_{k}"]: float(after[f"prob_{k}"]) for k in (1, 2, 3)}
        np.testing.assert_allclose([got[n] for n in names], expected, atol=2e-5)
    top = sorted(float(r["prob_1"]) for r in plain)
    threshold = (top[len(top) // 2 - 1] + top[len(top) // 2]) / 2  # between two: some answered, some unknown
    result, rows = predicted_rows(path, source, "--reject_below", str(threshold))
    assert list(rows[0])[:3] == ["path", "answer", "class_1"]
    expected = ["unknown" if float(r["prob_1"]) < threshold else r["class_1"] for r in rows]
    assert [r["answer"] for r in rows] == expected and 0 < expected.count("unknown") < len(rows)
    assert result["unknown"] == expected.count("unknown")


def test_calibrate_and_reject_below_refuse_a_multi_label_model(mosaics, tmp_path, caplog):
    checkpoint = multi_label_checkpoint(tmp_path / "run", mosaics, arch="simple_cnn", image_size=16)
    assert run_main(["--calibrate", "--resume", str(checkpoint), "--data", str(mosaics), "--dataset", "csv",
                     "-j", "0", "--no_progress"]) == 1
    assert "per-class sigmoid outputs (multi-label); --calibrate fits one softmax temperature" in caplog.text
    assert run_main(["--evaluation", "--resume", str(checkpoint), "--data", str(mosaics), "--dataset", "csv",
                     "-j", "0", "--no_progress", "--reject_below", "0.5"]) == 1
    assert "--reject_below: " in caplog.text and "is a multi-label model" in caplog.text
    assert not calibrated_path(checkpoint).exists()


def test_the_calibrated_checkpoints_export_gives_the_demo_its_temperature(calibrated, tiny_data, tmp_path):
    # the round trip: --calibrate's checkpoint -> main.py --jit -> the demo, whose probabilities are --evaluation's
    _, path, summary = calibrated
    data = tiny_data["folder"]
    exported = main_result(["--jit", "--resume", str(path), "--data", str(data), "-j", "0"])["path"]
    assert run_main(["--evaluation", "--resume", str(path), "--data", str(data), "-j", "0", "--no_progress",
                     "--out", str(tmp_path / "preds.json")]) == 0
    clf = demo_module().Classifier(exported)
    assert clf.temperature == pytest.approx(summary["temperature"]) and summary["temperature"] != pytest.approx(1.0)
    rows = read_json(tmp_path / "preds.json")
    got = clf.probabilities([r["path"] for r in rows])
    np.testing.assert_allclose(got, [r["scores"] for r in rows], atol=1e-4)


def test_a_sigmoid_heads_report_has_the_selective_numbers_but_no_calibration():
    """--reject_below with a single-label bce/asl head: coverage and accuracy (as --predict answers), no ECE (its
    scores are no softmax distribution)."""
    from engine.report import trust_metrics
    scores = torch.tensor([[0.9, 0.2], [0.3, 0.4], [0.1, 0.8], [0.6, 0.7]])
    labels = torch.tensor([0, 0, 1, 0])
    out = trust_metrics(scores, labels, 1.0, 0.5, calibration=False)
    assert set(out) == {"selective"}
    # answered: rows 0 (0.9 -> 0, right), 2 (0.8 -> 1, right), 3 (0.7 -> 1, wrong); row 1 (0.4) is unknown
    assert out["selective"]["accepted"] == 3 and out["selective"]["coverage"] == pytest.approx(75.0)
    assert out["selective"]["accuracy"] == pytest.approx(200 / 3)
    assert set(trust_metrics(scores.softmax(1), labels, 1.0, None)) == {"calibration"}
