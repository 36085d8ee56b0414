"""--tta and ensembles in the modes (issue #30 items 3 and 5): --evaluation, --predict, --onnx with the flip
folded into the graph, the refusals; on the tiny digits and a calibrated (untrained) simple_cnn."""
from __future__ import annotations

import contextlib
import csv
import io
import json

import pytest
import torch

import config
from export.core import choose_opset, export_onnx, onnx_runner, read_onnx_metadata
from helpers import calibrated_checkpoint, read_json, run_main, save_pair_model, write_pair_set
from models import create_model
from models.tta import ProbabilityAverage
from utils.checkpoint import load_checkpoint, save_checkpoint


@pytest.fixture(scope="module")
def checkpoint(tiny_data, tmp_path_factory):
    return calibrated_checkpoint(tmp_path_factory.mktemp("tta") / "run", "simple_cnn", tiny_data["folder"], 16)


def main_json(args: list[str]) -> dict:
    """Run main.py and return the result it prints."""
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert run_main(args) == 0
    return json.loads(buf.getvalue())


def evaluate_scores(tiny_data, tmp_path, name: str, *flags: str) -> tuple[dict, torch.Tensor]:
    """--evaluation's summary and the per-image scores it wrote (in file order)."""
    out = tmp_path / f"{name}.json"
    summary = main_json(["--evaluation", *flags, "--data", str(tiny_data["folder"]), "-j", "0", "--no_progress",
                         "--out", str(out)])
    return summary, torch.tensor([row["scores"] for row in read_json(out)])


def test_evaluation_with_tta_and_an_ensemble_of_one_checkpoint(tiny_data, checkpoint, tmp_path):
    plain, plain_scores = evaluate_scores(tiny_data, tmp_path, "plain", "--resume", str(checkpoint))
    twice, twice_scores = evaluate_scores(tiny_data, tmp_path, "twice", "--resume", str(checkpoint), str(checkpoint))
    assert torch.allclose(twice_scores, plain_scores, atol=1e-5)  # an ensemble of one checkpoint equals it
    assert [row["top1"] for row in twice["plain"]] == [plain["top1"]] * 2  # per-model numbers beside the ensemble's
    tta, tta_scores = evaluate_scores(tiny_data, tmp_path, "tta", "--resume", str(checkpoint), "--tta", "hflip")
    assert tta["plain"][0]["top1"] == plain["top1"]  # the plain number logged beside the TTA one
    assert tta["report_dir"].endswith("eval_test_tta_hflip") and twice["report_dir"].endswith("eval_test_ensemble2")
    assert not torch.allclose(tta_scores, plain_scores, atol=1e-3)  # the flip was applied
    assert torch.allclose(tta_scores.sum(1), torch.ones(len(tta_scores)), atol=1e-4)  # still probabilities


def test_an_ensemble_refuses_a_checkpoint_of_other_classes(tiny_data, checkpoint, tmp_path, caplog):
    ckpt = load_checkpoint(checkpoint)
    other = tmp_path / "other.pth"
    save_checkpoint({**ckpt, "class_names": list(reversed(ckpt["class_names"]))}, other)
    assert run_main(["--evaluation", "--resume", str(checkpoint), str(other), "--data", str(tiny_data["folder"]),
                     "-j", "0", "--no_progress"]) == 1
    assert "has class_names" in caplog.text and "same classes, task and preprocessing" in caplog.text
    caplog.clear()  # a member resized otherwise (bicubic) would read the first's bilinear inputs
    bicubic = tmp_path / "bicubic.pth"
    save_checkpoint({**ckpt, "config": {**ckpt["config"], "interpolation": "bicubic"}, "model_spec": None}, bicubic)
    assert run_main(["--evaluation", "--resume", str(checkpoint), str(bicubic), "--data", str(tiny_data["folder"]),
                     "-j", "0", "--no_progress"]) == 1
    assert "has interpolation bicubic" in caplog.text


def test_predict_with_tta_and_an_ensemble(tiny_data, checkpoint, tmp_path):
    source = tiny_data["folder"] / "test"
    plain = main_json(["--predict", str(source), "--resume", str(checkpoint), "-j", "0", "--no_progress"])
    both = main_json(["--predict", str(source), "--resume", str(checkpoint), str(checkpoint), "--tta", "hflip",
                        "-j", "0", "--no_progress"])
    rows, tta_rows = (list(csv.DictReader(open(r["predictions"], newline=""))) for r in (plain, both))
    assert [r["path"] for r in rows] == [r["path"] for r in tta_rows]
    assert any(r["prob_1"] != t["prob_1"] for r, t in zip(rows, tta_rows))


def test_onnx_with_the_folded_flip_equals_eager_tta(tmp_path):
    torch.manual_seed(0)
    model = create_model("simple_cnn", 3).eval()
    tta = ProbabilityAverage([model], tta="hflip").eval()
    x = torch.randn(4, 3, 16, 16)
    path = export_onnx(tta, x[:2], tmp_path / "m.onnx", {"tta": "hflip"}, choose_opset())
    got = onnx_runner(path)(x)
    expected = (model(x).softmax(1) + model(x.flip(-1)).softmax(1)) / 2
    assert torch.allclose(got.softmax(1), expected, atol=1e-5)
    assert not torch.allclose(model(x).softmax(1), expected, atol=1e-4)
    assert read_onnx_metadata(path)["tta"] == "hflip"


@pytest.mark.parametrize("argv, message", [
    (["--evaluation", "--resume", "c.pth", "--tta", "vflip"], "unknown mode 'vflip'"),
    (["--evaluation", "--resume", "c.pth", "--tta", "hflip", "2"], "takes no values"),
    (["--evaluation", "--resume", "c.pth", "--tta", "scales"], "at least one factor"),
    (["--evaluation", "--resume", "c.pth", "--tta", "scales", "0"], "not a factor > 0"),
    (["--onnx", "--resume", "c.pth", "--tta", "five_crop"], "folds only --tta hflip"),
    (["--train", "--resume", "a.pth", "b.pth"], "only with --evaluation or --predict"),
])
def test_tta_and_ensemble_flags_are_checked(argv, message, capsys):
    with pytest.raises(SystemExit):
        config.parse_config(argv)
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_tta_scales_parse_and_modes_match_the_wrapper():
    from config.modes.evaluation import TTA_MODES
    from models.tta import TTA_MODES as WRAPPER_MODES
    assert TTA_MODES == WRAPPER_MODES
    cfg = config.parse_config(["--evaluation", "--resume", "c.pth", "--tta", "scales", "0.875", "1"])
    assert cfg.tta == ["scales", "0.875", "1"] and cfg.ensemble is None


def test_multi_label_tta_averages_sigmoid_scores_and_reports_map(tiny_data, tmp_path):
    """A multi-label checkpoint under --tta hflip and as an ensemble of one: mAP reported, plain mAP beside it,
    the scores per-class sigmoid probabilities (not a softmax), the ensemble of one equal to the checkpoint."""
    pairs = write_pair_set(tiny_data["folder"], tmp_path / "pairs")
    ckpt = save_pair_model(tmp_path / "run" / "checkpoints" / "best.pth", pairs)

    def run(name: str, *flags: str) -> tuple[dict, list]:
        out = tmp_path / f"{name}.json"
        summary = main_json(["--evaluation", "--resume", str(ckpt), *flags, "--data", str(pairs), "--dataset", "csv",
                             "-j", "0", "-b", "5", "--no_progress", "--out", str(out)])
        return summary, [row["scores"] for row in read_json(out)]
    plain, plain_scores = run("plain")
    tta, tta_scores = run("tta", "--tta", "hflip")
    one, one_scores = run("one", str(ckpt))
    assert tta["plain"][0]["map"] == pytest.approx(plain["map"]) and "map" in tta
    assert one["map"] == pytest.approx(plain["map"], abs=1e-6)
    assert all(a == pytest.approx(b, abs=1e-5) for a, b in zip(one_scores, plain_scores))
    assert any(a != pytest.approx(b, abs=1e-4) for a, b in zip(tta_scores, plain_scores))


def test_onnx_mode_folds_the_flip_and_verifies_it(tiny_data, checkpoint):
    """main.py --onnx --tta hflip: the file's outputs are the eager TTA model's (checked by the export's own
    verification), and its metadata says so."""
    summary = main_json(["--onnx", "--resume", str(checkpoint), "--tta", "hflip", "--data", str(tiny_data["folder"]),
                         "-j", "0", "--no_progress"])
    assert read_onnx_metadata(summary["path"])["tta"] == "hflip"
    assert summary["max_abs_diff"] <= summary["bound"]
