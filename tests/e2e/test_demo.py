"""demos/classifier.py: a fresh process without the project reproduces main.py --evaluation exactly."""
from __future__ import annotations

import contextlib
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from helpers import ROOT, calibrated_checkpoint, demo_module, read_json, run_demo, run_main


@pytest.fixture(scope="module")
def exported(tiny_data, tmp_path_factory):
    """A resnet18 checkpoint (16x16), its two exports and --evaluation's predictions on the test split."""
    data = tiny_data["folder"]
    run = tmp_path_factory.mktemp("demo") / "run"
    ckpt = calibrated_checkpoint(run, "resnet18", data, 16)
    with contextlib.redirect_stdout(io.StringIO()):
        for mode in ("--jit", "--onnx"):
            assert run_main([mode, "--resume", str(ckpt), "--data", str(data), "-j", "0"]) == 0
        assert run_main(["--evaluation", "--resume", str(ckpt), "--data", str(data), "-j", "0", "--no_progress",
                         "--out", str(run / "preds.json")]) == 0
    return {"data": data, "run": run, "preds": read_json(run / "preds.json")}


@pytest.mark.parametrize("model, backend", [("model_jit.pt", "torchscript"), ("model.onnx", "onnxruntime")])
def test_demo_reproduces_evaluation_in_a_fresh_process(exported, tmp_path, model, backend):
    proc, imported = run_demo([str(exported["run"] / "export" / model), str(exported["data"] / "test"),
                               "--json", "--topk", "3"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert imported == []
    assert f"12 image(s) classified with {model} ({backend})" in proc.stderr
    rows = {Path(r["path"]).resolve(): r for r in map(json.loads, proc.stdout.splitlines())}
    preds = exported["preds"]
    assert len(rows) == len(preds) == 12
    assert len({p["prediction"] for p in preds}) > 1  # the model tells images apart
    for p in preds:
        row = rows[Path(p["path"]).resolve()]
        assert int(np.argmax(row["probabilities"])) == p["prediction"], p["path"]
        np.testing.assert_allclose(row["probabilities"], p["scores"], rtol=0, atol=1e-5)
        assert row["topk"][0][0] == p["prediction_name"] and len(row["topk"]) == 3
        assert [v for _, v in row["topk"]] == sorted(row["probabilities"], reverse=True)


def test_demo_prints_topk_and_skips_unreadable_images(exported, tmp_path):
    folder = tmp_path / "images"
    (folder / "sub").mkdir(parents=True)
    first, second = sorted((exported["data"] / "test" / "7").iterdir())[:2]
    shutil.copy(first, folder / "a.png")
    shutil.copy(second, folder / "sub" / "b.png")
    (folder / "broken.jpg").write_bytes(b"not an image")
    proc, _ = run_demo([str(exported["run"] / "export" / "model.onnx"), str(folder), "--topk", "2"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    assert [line.split(":")[0] for line in lines] == [str(folder / "a.png"), str(folder / "sub" / "b.png")]
    for line in lines:  # "path: name p, name p"
        pairs = [pair.split() for pair in line.split(": ", 1)[1].split(", ")]
        assert len(pairs) == 2 and all(name in ("0", "1", "7") and 0 <= float(p) <= 1 for name, p in pairs)
    assert f"skipped {folder / 'broken.jpg'}: cannot decode image" in proc.stderr
    assert "2 image(s) classified with model.onnx (onnxruntime), 1 unreadable image(s) skipped" in proc.stderr


def test_demo_classifier_class_in_process(exported):
    demo = demo_module()
    clf = demo.Classifier(exported["run"] / "export" / "model.onnx")
    paths = [p["path"] for p in exported["preds"][:4]]
    top = clf.predict(paths + [Image.open(paths[0])], topk=2)
    assert [t[0][0] for t in top[:4]] == [p["prediction_name"] for p in exported["preds"][:4]]
    assert top[4] == top[0]  # a Pillow image gives what its file gives
    with pytest.raises(ValueError, match="unknown backend"):
        demo.Classifier(exported["run"] / "export" / "model.onnx", backend="tensorrt")


@pytest.mark.slow
def test_demo_reproduces_evaluation_on_the_bundled_digits_test_split(tmp_path):
    """The quickstart recipe trained an epoch on the bundled digits: both exports reproduce --evaluation on
    the real 270-image test split."""
    from dataloader.digits import make_digits
    data = make_digits(tmp_path / "digits")
    with contextlib.redirect_stdout(io.StringIO()):
        assert run_main(["--train", "--config", str(ROOT / "z_task_shell/configs/digits_resnet18.yaml"),
                         "--data", str(data), "--output", str(tmp_path / "out"), "--epochs", "1", "--warmup", "0",
                         "-j", "0", "--no_progress"]) == 0
        ckpt = tmp_path / "out/resnet18/digits_baseline/checkpoints/best.pth"
        for mode in ("--jit", "--onnx"):
            assert run_main([mode, "--resume", str(ckpt), "--data", str(data), "-j", "0"]) == 0
        assert run_main(["--evaluation", "--resume", str(ckpt), "--data", str(data), "-j", "0", "--no_progress",
                         "--out", str(tmp_path / "preds.json")]) == 0
    preds = {str(Path(p["path"]).resolve()): p for p in read_json(tmp_path / "preds.json")}
    assert len(preds) == 270
    for model in ("model_jit.pt", "model.onnx"):
        proc, imported = run_demo([str(ckpt.parent.parent / "export" / model), str(data / "test"), "--json"],
                                  cwd=tmp_path)
        assert proc.returncode == 0 and imported == [], proc.stderr[-3000:]
        rows = [json.loads(line) for line in proc.stdout.splitlines()]
        assert len(rows) == 270
        for row in rows:
            p = preds[str(Path(row["path"]).resolve())]
            assert int(np.argmax(row["probabilities"])) == p["prediction"], row["path"]
            np.testing.assert_allclose(row["probabilities"], p["scores"], rtol=0, atol=1e-5)


def test_demo_refuses_a_bomb_from_its_header_and_says_what_is_wrong(exported, tmp_path):
    from helpers import write_png_bomb
    folder = tmp_path / "images"
    folder.mkdir()
    shutil.copy(sorted((exported["data"] / "test" / "7").iterdir())[0], folder / "a.png")
    write_png_bomb(folder / "bomb.png")
    proc, imported = run_demo([str(exported["run"] / "export" / "model.onnx"), str(folder)], cwd=tmp_path)
    assert proc.returncode == 0 and imported == [], proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and "DecompressionBomb" not in proc.stderr
    assert (f"skipped {folder / 'bomb.png'}: 30000x30000 pixels is over the limit of 89478485 pixels" in proc.stderr
            and "--max_image_pixels" in proc.stderr and "1 unreadable image(s) skipped" in proc.stderr)
    assert proc.stdout.startswith(str(folder / "a.png"))
    demo = demo_module()
    with pytest.raises(demo.ImageTooLarge, match="16x16 pixels is over the limit of 255 pixels"):
        demo.read_image(folder / "a.png", max_pixels=255)
    assert demo.read_image(folder / "a.png", max_pixels=256).shape == (3, 16, 16)


def test_demo_names_a_training_checkpoint_and_refuses_an_empty_folder(exported, tmp_path):
    ckpt = next(exported["run"].rglob("best.pth"))
    image = sorted((exported["data"] / "test" / "7").iterdir())[0]
    proc, _ = run_demo([str(ckpt), str(image)], cwd=tmp_path)
    assert proc.returncode == 1 and "corrupted" not in proc.stderr, proc.stderr[-3000:]
    assert f"{ckpt} is a training checkpoint (torch.save), not an exported model" in proc.stderr
    assert f"python main.py --jit --resume {ckpt} (or --onnx)" in proc.stderr
    (tmp_path / "empty").mkdir()
    proc, _ = run_demo([str(exported["run"] / "export" / "model.onnx"), str(tmp_path / "empty")], cwd=tmp_path)
    assert proc.returncode == 1 and f"no images (.jpg, .jpeg" in proc.stderr and "Traceback" not in proc.stderr
