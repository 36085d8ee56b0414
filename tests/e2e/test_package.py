"""--package (a folder timm loads), --push_to_hub (through huggingface_hub to a recording Hub on 127.0.0.1) and
--pretrained hf-hub:REPO / local-dir:DIR (fine-tuning from a package, offline from the filled cache)."""
from __future__ import annotations

import base64
import hashlib
import http.server
import json
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch

from helpers import calibrated_checkpoint, free_port, main_process, project_env, read_json, real_images, run_main
from models import create_model
from models.package import load_package
from models.spec import ModelSpec
from utils.checkpoint import load_checkpoint

PACKAGE_FILES = {"model.safetensors", "config.json", "README.md"}
REPO = "me/tiny-digits"
COMMIT = "0123456789abcdef0123456789abcdef01234567"
MAX_REQUESTS = 100  # the recording Hub's request loop ends after this many requests at most

# timm loads these from local-dir: with our logits: the torchvision resnet18 (the same keys as timm's) and two of
# our timm family
TIMM_LOADABLE = ("resnet18", "timm/efficientnet_b0", "timm/mobilenetv3_small_100")

TIMM_LOGITS = """
import sys, timm, torch
model = timm.create_model('local-dir:' + sys.argv[1], pretrained=True).eval()
with torch.no_grad():
    torch.save(model(torch.load(sys.argv[2])), sys.argv[3])
"""


def our_logits(ckpt: Path, arch: str, images: torch.Tensor) -> torch.Tensor:
    """The checkpoint's model, as our code builds it, on ``images`` (already normalised)."""
    state = load_checkpoint(ckpt)
    model = create_model(arch, len(state["class_names"]))
    model.load_state_dict(state["model"])
    with torch.no_grad():
        return model.eval()(images)


def normalised(data: Path, size: int) -> torch.Tensor:
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    return (real_images(data, size, 4) - mean[:, None, None]) / std[:, None, None]


@pytest.mark.parametrize("arch", TIMM_LOADABLE)
def test_timm_loads_the_package_with_our_logits_in_another_process(tiny_data, tmp_path, arch):
    ckpt = calibrated_checkpoint(tmp_path / "run", arch, tiny_data["folder"], 32)
    out = tmp_path / "pkg"
    assert run_main(["--package", str(ckpt), str(out)]) == 0
    assert {p.name for p in out.iterdir()} == PACKAGE_FILES
    config = read_json(out / "config.json")
    assert config["timm_loadable"] is True and config["architecture"] == arch.removeprefix("timm/")
    assert config["num_classes"] == 3 and config["label_names"] == ["0", "1", "7"]
    pre = config["pretrained_cfg"]
    assert pre["input_size"] == [3, 32, 32] and pre["mean"] == [0.485, 0.456, 0.406] and pre["crop_mode"] == "border"
    assert pre["interpolation"] == "bilinear" and pre["crop_pct"] == 1.0 and pre["num_classes"] == 3

    images = normalised(tiny_data["folder"], 32)
    torch.save(images, tmp_path / "x.pt")
    r = subprocess.run([sys.executable, "-c", TIMM_LOGITS, str(out), str(tmp_path / "x.pt"), str(tmp_path / "y.pt")],
                       capture_output=True, text=True, timeout=300, cwd=tmp_path,
                       env=project_env(HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1"))
    assert r.returncode == 0, r.stderr[-3000:]
    theirs, ours = torch.load(tmp_path / "y.pt"), our_logits(ckpt, arch, images)
    assert theirs.shape == ours.shape == (4, 3)
    assert (theirs - ours).abs().max().item() <= 1e-5
    model, spec = load_package(out)  # our loader reads the same folder back exactly
    assert spec.arch == arch and spec.class_names == ("0", "1", "7")
    with torch.no_grad():  # two models built apart: equal but for summation order
        torch.testing.assert_close(model(images), ours, rtol=0, atol=1e-6)


def test_a_family_timm_cannot_build_gets_the_folder_a_note_and_our_loader(tiny_data, tmp_path):
    import timm
    ckpt = calibrated_checkpoint(tmp_path / "run", "mobilenet_v3_small", tiny_data["folder"], 32)
    out = tmp_path / "pkg"
    assert run_main(["--package", str(ckpt), str(out)]) == 0
    config = read_json(out / "config.json")
    assert config["timm_loadable"] is False and config["architecture"] == "torchvision/mobilenet_v3_small"
    assert "no timm model of that name" in config["note"]
    assert "timm cannot load this package" in (out / "README.md").read_text()
    with pytest.raises(RuntimeError, match="Unknown model"):  # timm refuses it by name, not with other weights
        timm.create_model(f"local-dir:{out}", pretrained=True)
    model, spec = load_package(out)
    images = normalised(tiny_data["folder"], 32)
    with torch.no_grad():
        assert torch.equal(model(images), our_logits(ckpt, "mobilenet_v3_small", images))


def test_the_card_describes_the_run(tiny_run, tmp_path):
    run = shutil.copytree(tiny_run, tmp_path / "run")
    (run / "export").mkdir(exist_ok=True)
    (run / "export" / "model.onnx").write_bytes(b"onnx")
    out = tmp_path / "pkg"
    assert run_main(["--package", str(run / "checkpoints" / "best.pth"), str(out)]) == 0
    card = (out / "README.md").read_text()
    test = read_json(run / "metrics.json")["test"]
    assert card.startswith("---\nlibrary_name: timm\n") and "# resnet18 (3 classes)" in card
    assert "python main.py --train --data " in card and "--arch resnet18" in card and "--epochs 1" in card
    assert f"| test_top1 | {test['test_top1']:.4f} |" in card
    per_class = read_json(run / "eval_test" / "metrics.json")["per_class"]
    assert f"| 7 | {per_class['7']['precision']:.4f} |" in card and "- `export/model.onnx`" in card
    assert "timm.create_model('hf-hub:<repo>', pretrained=True)" in card


def test_an_existing_folder_of_other_files_is_not_replaced(tiny_run, tmp_path, capsys):
    out = tmp_path / "pkg"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert run_main(["--package", str(tiny_run / "checkpoints" / "best.pth"), str(out)]) != 0
    assert "holds other files than a package's (notes.txt)" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["notes.txt"]
    (out / "notes.txt").unlink()
    (out / "README.md").write_text("mine")  # a package's file name, but not a package this project wrote
    assert run_main(["--package", str(tiny_run / "checkpoints" / "best.pth"), str(out)]) != 0
    err = capsys.readouterr().err.strip()
    assert f"--package: {out} exists and is not a package --package wrote" in err and len(err.splitlines()) == 1
    assert "choose another DIR or remove it" in err and (out / "README.md").read_text() == "mine"
    assert run_main(["--package", str(tiny_run / "checkpoints" / "best.pth"), str(tmp_path / "pkg2")]) == 0
    assert run_main(["--package", str(tiny_run / "checkpoints" / "best.pth"), str(tmp_path / "pkg2")]) == 0  # ours


# ------------------------------------------------------------------ a Hub on 127.0.0.1 that records uploads
class RecordingHub(http.server.BaseHTTPRequestHandler):
    """The endpoints huggingface_hub's create_repo and upload_folder call (repos/create, validate-yaml,
    preupload: every file 'regular', commit: NDJSON with base64 files), and resolve/ (HEAD, GET) serving what
    was committed, as hf_hub_download reads it."""
    files: dict[str, bytes] = {}
    calls: list[str] = []

    def log_message(self, *args) -> None:
        pass

    def _reply(self, code: int, body: bytes = b"", headers: dict | None = None, send_body: bool = True) -> None:
        self.send_response(code)
        for key, value in {"Content-Length": str(len(body)), **(headers or {})}.items():
            self.send_header(key, value)
        self.end_headers()
        if send_body:
            self.wfile.write(body)

    def _json(self, data) -> None:
        self._reply(200, json.dumps(data).encode(), {"Content-Type": "application/json"})

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.calls.append(f"POST {self.path}")
        base = f"http://{self.headers['Host']}"
        if self.path == "/api/repos/create":
            payload = json.loads(body)
            self._json({"url": f"{base}/{payload['organization']}/{payload['name']}"})
        elif self.path == "/api/validate-yaml":
            self._json({"errors": [], "warnings": []})
        elif self.path.startswith(f"/api/models/{REPO}/preupload/"):
            files = json.loads(body)["files"]
            self._json({"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in files]})
        elif self.path.startswith(f"/api/models/{REPO}/commit/"):
            for line in body.decode().splitlines():
                item = json.loads(line)
                if item["key"] == "file":
                    assert item["value"]["encoding"] == "base64"
                    self.files[item["value"]["path"]] = base64.b64decode(item["value"]["content"])
            self._json({"commitUrl": f"{base}/{REPO}/commit/{COMMIT}", "commitOid": COMMIT})
        else:
            self._reply(404)

    def _resolve(self, send_body: bool) -> None:
        self.calls.append(f"{self.command} {self.path}")
        prefix = f"/{REPO}/resolve/main/"
        name = self.path[len(prefix):] if self.path.startswith(prefix) else None
        if name not in self.files:
            self._reply(404, send_body=send_body)
            return
        data = self.files[name]
        self._reply(200, data, {"X-Repo-Commit": COMMIT, "ETag": f'"{hashlib.sha256(data).hexdigest()}"'}, send_body)

    def do_HEAD(self) -> None:
        self._resolve(False)

    def do_GET(self) -> None:
        self._resolve(True)


@pytest.fixture
def hub():
    """The recording Hub on 127.0.0.1, serving a bounded number of requests in a thread; its URL."""
    RecordingHub.files, RecordingHub.calls = {}, []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), RecordingHub)
    server.timeout = 0.2
    stop = threading.Event()

    def serve() -> None:
        for _ in range(MAX_REQUESTS * 50):  # each wait is at most 0.2 s: the loop ends by itself
            if stop.is_set() or len(RecordingHub.calls) >= MAX_REQUESTS:
                break
            server.handle_request()
    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    stop.set()
    thread.join(timeout=5)
    server.server_close()


def test_push_pull_back_and_fine_tune_offline_from_the_hub(tiny_run, tiny_data, tmp_path, hub):
    from huggingface_hub import hf_hub_download
    out = tmp_path / "pkg"
    r = main_process("--package", str(tiny_run / "checkpoints" / "best.pth"), str(out), "--push_to_hub", REPO,
                     HF_ENDPOINT=hub, HF_HUB_DISABLE_XET="1", HF_TOKEN="hf_test", HF_HOME=str(tmp_path / "push_home"))
    assert r.returncode == 0, r.stderr[-3000:]
    assert "POST /api/repos/create" in RecordingHub.calls
    assert set(RecordingHub.files) == PACKAGE_FILES
    for name, data in RecordingHub.files.items():  # the right bytes arrived
        assert data == (out / name).read_bytes(), name
    assert f"hf-hub:{REPO}" in RecordingHub.files["README.md"].decode()

    cache = tmp_path / "hf" / "hub"  # pulled back through huggingface_hub into an empty cache
    for name in ("config.json", "model.safetensors"):
        hf_hub_download(REPO, name, endpoint=hub, cache_dir=cache)
    r = main_process("--train", "--data", str(tiny_data["folder"]), "--arch", "resnet18", "--pretrained",
                     f"hf-hub:{REPO}", "--freeze_backbone", "--lr", "0", "--epochs", "1", "--warmup", "0", "-b", "8",
                     "-j", "0", "--output", str(tmp_path / "out"), "--no_progress",
                     HF_HOME=str(tmp_path / "hf"), HF_HUB_OFFLINE="1")
    assert r.returncode == 0, r.stderr[-3000:]
    log = (tmp_path / "out" / "resnet18" / "default" / "log.txt").read_text()
    assert f"pretrained hf-hub:{REPO}: cached at {cache}" in log and "image_size = [16, 16] from the package" in log
    trained = load_checkpoint(tmp_path / "out" / "resnet18" / "default" / "checkpoints" / "last.pth")
    package, _ = load_package(out)
    assert trained["model"].keys() == package.state_dict().keys()
    for key, value in package.state_dict().items():  # a frozen backbone at LR 0: the package's every tensor
        assert torch.equal(trained["model"][key], value), key
    assert ModelSpec.from_dict(trained["model_spec"]).image_size == (16, 16)


def test_an_offline_miss_and_a_missing_folder_are_one_clear_line(tiny_data, tmp_path, caches, capsys):
    base = ["--train", "--data", str(tiny_data["folder"]), "--arch", "resnet18", "--epochs", "1", "--warmup", "0",
            "-j", "0", "--output", str(tmp_path / "out"), "--no_progress", "--pretrained"]
    assert run_main([*base, "hf-hub:nobody/nothing"]) != 0
    err = capsys.readouterr().err
    assert "the hf-hub:nobody/nothing weights for resnet18 are not cached and HF_HUB_OFFLINE=1 forbids downloads" in err
    assert str(caches / "hf" / "hub" / "models--nobody--nothing" / "snapshots" / "main" / "model.safetensors") in err
    assert "with its config.json beside it" in err
    assert run_main([*base, f"local-dir:{tmp_path / 'none'}"]) != 0
    assert f"{tmp_path / 'none'} holds no package (no model.safetensors or config.json)" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()



def test_a_failed_push_is_one_line_and_keeps_the_package(tiny_run, tmp_path):
    out = tmp_path / "pkg"
    r = main_process("--package", str(tiny_run / "checkpoints" / "best.pth"), str(out), "--push_to_hub", REPO,
                     HF_ENDPOINT=f"http://127.0.0.1:{free_port()}", HF_HUB_DISABLE_XET="1", HF_TOKEN="hf_test",
                     HF_HOME=str(tmp_path / "home"))
    assert r.returncode != 0
    assert f"--push_to_hub {REPO}: the upload to http://127.0.0.1:" in r.stderr and "Traceback" not in r.stderr
    assert f"the package is complete in {out}" in r.stderr
    assert {p.name for p in out.iterdir()} == PACKAGE_FILES
