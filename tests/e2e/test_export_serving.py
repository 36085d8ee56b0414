"""main.py --triton, --onnx --half, --extract_features and --evaluation --knn on a resnet18 checkpoint (random
weights, batch-norm statistics of the training images: helpers.calibrated_checkpoint), checked against the eager
model, Triton's own config message, scikit-learn and the dataset's files."""
from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch

import config
from export.core import FP16_RTOL, logit_bound
from helpers import calibrated_checkpoint, demo_module, run_main


def main_json(*args: str) -> dict:
    """Run ``main.py ARGS`` in this process; its printed result."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert run_main(list(args)) == 0
    return json.loads(out.getvalue())


@pytest.fixture(scope="module")
def checkpoint(tiny_data, tmp_path_factory) -> dict:
    """A resnet18 checkpoint (16x16) of the tiny digits, its run folder, its data and its eager model."""
    from applications.setup.common import restore_for_inference
    data = tiny_data["folder"]
    run = tmp_path_factory.mktemp("serving") / "run"
    ckpt = calibrated_checkpoint(run, "resnet18", data, 16)
    cfg = config.parse_config(["--evaluation", "--resume", str(ckpt), "--data", str(data), "--device", "cpu"])
    return {"ckpt": str(ckpt), "data": str(data), "run": run, "cfg": cfg, "restored": restore_for_inference(cfg)}


def sample(checkpoint: dict, split: str = "test", count: int | None = 12) -> tuple[torch.Tensor, torch.Tensor]:
    """Real images of ``split``, preprocessed as evaluation does, and the eager logits on them."""
    from applications.convert import sample_images
    images = sample_images(checkpoint["cfg"], checkpoint["restored"], split, count=count)
    with torch.no_grad():
        return images, checkpoint["restored"].model(images)


# ---------------------------------------------------------------------------------------------- Triton
def test_triton_repository_parses_and_its_model_runs_with_the_declared_names_and_shapes(checkpoint):
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    from export.core import onnx_session
    result = main_json("--triton", "--resume", checkpoint["ckpt"], "--data", checkpoint["data"], "-j", "0",
                       "--triton_max_batch", "8")
    model_dir = checkpoint["run"] / "export" / "triton" / "resnet18"
    assert result["config"] == str(model_dir / "config.pbtxt") and result["model_name"] == "resnet18"
    files = sorted(p.relative_to(model_dir.parent).as_posix() for p in model_dir.parent.rglob("*"))
    assert files == ["resnet18", "resnet18/1", "resnet18/1/model.onnx", "resnet18/config.pbtxt", "resnet18/labels.txt"]
    assert (model_dir / "labels.txt").read_text().splitlines() == ["0", "1", "7"]
    cfg = text_format.Parse((model_dir / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
    assert cfg.name == "resnet18" and cfg.backend == "onnxruntime" and cfg.max_batch_size == 8
    assert list(cfg.dynamic_batching.preferred_batch_size) == [4, 8]
    (inp,), (out,) = cfg.input, cfg.output
    assert inp.data_type == out.data_type == model_config_pb2.TYPE_FP32
    assert list(inp.dims) == [3, 16, 16] and list(out.dims) == [3] and out.label_filename == "labels.txt"

    session = onnx_session(model_dir / "1" / "model.onnx")
    assert [i.name for i in session.get_inputs()] == [inp.name]
    assert [o.name for o in session.get_outputs()] == [out.name]
    assert session.get_inputs()[0].type == "tensor(float)"  # TYPE_FP32
    images, expected = sample(checkpoint)
    bound = logit_bound(float(expected.abs().max()))
    for batch in (1, 3):  # Triton adds the batch axis to dims: batch x 3 x 16 x 16 in, batch x 3 out
        x = images[:batch].numpy()
        assert list(x.shape[1:]) == list(inp.dims)
        (y,) = session.run([out.name], {inp.name: x})
        assert list(y.shape) == [batch, *out.dims] and y.dtype == np.float32
        np.testing.assert_allclose(y, expected[:batch].numpy(), rtol=0, atol=bound)


# ---------------------------------------------------------------------------------------------- fp16 ONNX
def test_fp16_onnx_is_half_the_size_and_gives_eagers_top1_within_the_fp16_bound(checkpoint, tmp_path):
    from export.core import onnx_session
    common = ["--resume", checkpoint["ckpt"], "--data", checkpoint["data"], "-j", "0"]
    fp32 = main_json("--onnx", *common)
    half = main_json("--onnx", "--half", *common)
    assert half["path"] == str(checkpoint["run"] / "export" / "model.fp16.onnx") and half["precision"] == "fp16"
    ratio = Path(half["path"]).stat().st_size / Path(fp32["path"]).stat().st_size
    assert 0.45 < ratio < 0.55, ratio
    session = onnx_session(half["path"])
    assert session.get_inputs()[0].type == session.get_outputs()[0].type == "tensor(float)"  # fp16 inside only
    images, expected = sample(checkpoint)
    got = torch.from_numpy(session.run(None, {"input": images.numpy()})[0])
    assert torch.equal(got.argmax(1), expected.argmax(1))
    diff = float((got - expected).abs().max())
    assert 0 < diff <= half["bound"]  # it is fp16: not the fp32 logits, within the bound it was verified against
    assert half["bound"] >= FP16_RTOL * max(1.0, half["max_abs_logit"])
    # the demo reads the input type from the session and classifies as from the fp32 file
    demo = demo_module()
    assert demo.OnnxRuntimeBackend(Path(half["path"])).input_dtype == np.float32
    assert torch.equal(demo.OnnxRuntimeBackend(Path(half["path"]))(images).argmax(1), expected.argmax(1))


# ---------------------------------------------------------------------------------------------- features, k-NN
def read_index(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_extracted_features_are_layer4_pooled_and_the_index_matches_the_files(checkpoint):
    result = main_json("--extract_features", "test", "--resume", checkpoint["ckpt"], "--data", checkpoint["data"],
                       "-j", "0")
    from utils.feature_files import load_features
    run, data = checkpoint["run"], Path(checkpoint["data"])
    assert result["features"] == str(run / "features_test.npy") and result["dim"] == 512
    features, rows = np.load(run / "features_test.npy"), read_index(run / "features_test.csv")
    # the sidecar: which checkpoint, which split, how many rows, and the two files' sha256 (checked by the loader)
    checked, checked_rows, sidecar = load_features(run, "test")
    np.testing.assert_array_equal(checked, features)
    assert checked_rows == rows and result["sidecar"] == str(run / "features_test.json")
    assert (sidecar["split"], sidecar["rows"], sidecar["dim"]) == ("test", len(rows), 512)
    ckpt = Path(checkpoint["ckpt"])
    assert sidecar["checkpoint"]["path"] == str(ckpt.resolve()) and sidecar["data"] == str(data.resolve())
    expected_sha = hashlib.sha256(ckpt.read_bytes()).hexdigest()
    assert sidecar["checkpoint"]["sha256"] == result["checkpoint_sha256"] == expected_sha
    files = sorted(p.relative_to(data).as_posix() for p in (data / "test").rglob("*.png"))
    assert features.shape == (len(files), 512) and features.dtype == np.float32
    assert sorted(r["path"] for r in rows) == files
    for i, r in enumerate(rows):  # each row: its own file, the label of its folder
        assert r["row"] == str(i) and r["class_name"] == Path(r["path"]).parent.name
        assert r["label"] == str(["0", "1", "7"].index(r["class_name"]))
    # by hand: the same images through resnet18's layers up to layer4, averaged over positions
    images, _ = sample(checkpoint, count=None)
    m = checkpoint["restored"].model
    with torch.no_grad():
        stem = m.maxpool(m.relu(m.bn1(m.conv1(images))))
        expected = m.layer4(m.layer3(m.layer2(m.layer1(stem)))).mean((2, 3))
    np.testing.assert_allclose(features, expected.numpy(), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("vote", ["weighted", "majority"])
def test_knn_top1_equals_scikit_learns_on_the_extracted_features(checkpoint, vote):
    from sklearn.neighbors import KNeighborsClassifier

    from engine.features import KNN_TEMPERATURE
    common = ["--resume", checkpoint["ckpt"], "--data", checkpoint["data"], "-j", "0"]
    for split in ("train", "test"):
        main_json("--extract_features", split, *common)
    evaluation = main_json("--evaluation", "--knn", "3", "--knn_vote", vote, *common)
    knn = evaluation["knn"]
    assert (knn["k"], knn["vote"], knn["bank"], knn["split"]) == (3, vote, "train", "test")
    run = checkpoint["run"]
    assert json.loads((Path(evaluation["report_dir"]) / "knn.json").read_text()) == knn
    bank, queries = np.load(run / "features_train.npy"), np.load(run / "features_test.npy")
    bank_labels = [int(r["label"]) for r in read_index(run / "features_train.csv")]
    labels = [int(r["label"]) for r in read_index(run / "features_test.csv")]
    weights = "uniform" if vote == "majority" else (lambda d: np.exp((1 - d) / KNN_TEMPERATURE))
    reference = KNeighborsClassifier(n_neighbors=3, metric="cosine", algorithm="brute", weights=weights)
    expected = 100.0 * float(np.mean(reference.fit(bank, bank_labels).predict(queries) == labels))
    assert knn["top1"] == pytest.approx(expected) and knn["images"] == len(labels) == 12
    assert knn["linear_top1"] == pytest.approx(evaluation["top1"])  # the linear head's, on the same images


def test_knn_is_refused_on_the_train_split_before_anything_runs_and_for_a_multi_label_model(checkpoint, mosaics,
                                                                                             tmp_path, caplog, capsys):
    from helpers import multi_label_checkpoint
    before = sorted(p.relative_to(checkpoint["run"]) for p in checkpoint["run"].rglob("*"))
    with pytest.raises(SystemExit) as refused:  # a flag error: refused while the flags are parsed
        run_main(["--evaluation", "--knn", "3", "--eval_split", "train", "--resume", checkpoint["ckpt"],
                  "--data", checkpoint["data"], "-j", "0"])
    assert refused.value.code == 2
    assert "on the train split itself each image would be its own nearest neighbour: use --eval_split val or " \
           "test" in capsys.readouterr().err
    # nothing ran: no eval_train report, no log line, the run folder as it was
    assert sorted(p.relative_to(checkpoint["run"]) for p in checkpoint["run"].rglob("*")) == before
    assert not (checkpoint["run"] / "eval_train").exists()
    ckpt = multi_label_checkpoint(tmp_path / "ml", mosaics, image_size=16)
    assert run_main(["--evaluation", "--knn", "3", "--resume", str(ckpt), "--data", str(mosaics), "--dataset", "csv",
                     "--multi_label", "-j", "0"]) == 1
    assert "is a multi-label model; the k-NN vote picks one class per image" in caplog.text


def test_a_multi_label_models_features_carry_each_images_label_set(mosaics, tmp_path):
    from helpers import multi_label_checkpoint
    ckpt = multi_label_checkpoint(tmp_path / "ml", mosaics, image_size=16)
    result = main_json("--extract_features", "test", "--resume", str(ckpt), "--data", str(mosaics), "--dataset", "csv",
                       "--multi_label", "-j", "0")
    rows = read_index(tmp_path / "ml" / "features_test.csv")
    with open(mosaics / "test.csv", newline="") as f:
        truth = {r["path"]: r["label"].split() for r in csv.DictReader(f)}
    assert result["count"] == len(rows) == len(truth) == 3
    assert np.load(result["features"]).shape == (3, 512)
    for r in rows:  # classes.txt names the digits 0..9: the label indices are the names
        assert r["label"].split(";") == r["class_name"].split(";") == truth[r["path"]]
