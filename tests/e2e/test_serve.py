"""demos/serve.py: real HTTP requests to the service, started as its own process on a free port of 127.0.0.1,
answer exactly what demos/classifier.py answers for the same files; bad uploads get a 4xx with a message and the
service keeps serving (an over-long body refused without being read); requests that arrive together share a forward
pass; at most --max_decoding images are decoded at once."""
from __future__ import annotations

import contextlib
import io
import json
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import pytest
import requests

from helpers import ROOT, calibrated_checkpoint, multi_label_checkpoint, run_demo, run_main, serving, write_png_bomb


@pytest.fixture(scope="module")
def exported(tiny_data, tmp_path_factory):
    """A resnet18 (16x16) exported to ONNX, the test images, and the demo's --json rows for them by path."""
    data = tiny_data["folder"]
    run = tmp_path_factory.mktemp("serve") / "run"
    ckpt = calibrated_checkpoint(run, "resnet18", data, 16)
    with contextlib.redirect_stdout(io.StringIO()):
        assert run_main(["--onnx", "--resume", str(ckpt), "--data", str(data), "-j", "0"]) == 0
    model = run / "export" / "model.onnx"
    proc, imported = run_demo([str(model), str(data / "test"), "--json", "--topk", "2", "--reject_below", "0.5"],
                              cwd=run)
    assert proc.returncode == 0 and imported == [], proc.stderr[-3000:]
    rows = {Path(r["path"]).resolve(): r for r in map(json.loads, proc.stdout.splitlines())}
    return {"model": model, "rows": rows, "cwd": run}


def post_raw(url: str, data: bytes, **kw) -> requests.Response:
    return requests.post(url + "/predict", data=data, headers={"Content-Type": "application/octet-stream"},
                         timeout=120, **kw)


def post_file(url: str, name: str, data: bytes) -> requests.Response:
    return requests.post(url + "/predict", files={"file": (name, data, "image/png")}, timeout=120)


def raw_request(url: str, head: str, body_parts: list[bytes], timeout: float = 15) -> tuple[int, dict, float]:
    """``head`` (the request line and headers) then ``body_parts`` sent on one socket without ending the body;
    the answer's status and JSON, and the seconds until the server closed the connection. A server that
    waited for the rest of the body would time out here (socket.timeout: the test fails)."""
    parts = urlsplit(url)
    with socket.create_connection((parts.hostname, parts.port), timeout=timeout) as sock:
        start = time.monotonic()
        sock.sendall(head.replace("\n", "\r\n").encode() + b"\r\n")
        for part in body_parts:
            sock.sendall(part)
        received = b""
        while chunk := sock.recv(65536):  # until the server closes the connection
            received += chunk
        elapsed = time.monotonic() - start
    status_line, _, rest = received.partition(b"\r\n")
    return int(status_line.split()[1]), json.loads(rest.partition(b"\r\n\r\n")[2]), elapsed


def assert_same_answer(got: dict, demo_row: dict) -> None:
    assert [name for name, _ in got["topk"]] == [name for name, _ in demo_row["topk"]]
    np.testing.assert_allclose(got["probabilities"], demo_row["probabilities"], rtol=0, atol=1e-6)
    assert got["answer"] == demo_row["answer"]


def test_service_answers_what_the_demo_answers_as_multipart_and_raw_body(exported):
    rows = exported["rows"]
    assert len(rows) == 12 and len({r["topk"][0][0] for r in rows.values()}) > 1  # the model tells images apart
    with serving(exported["model"], "--topk", "2", "--reject_below", "0.5", cwd=exported["cwd"]) as served:
        for path, row in rows.items():
            data = path.read_bytes()
            raw, multipart = post_raw(served.url, data), post_file(served.url, path.name, data)
            assert raw.status_code == multipart.status_code == 200, (raw.text, multipart.text)
            assert raw.json() == multipart.json()
            assert_same_answer(raw.json(), row)
        health = served.health()
        assert (health["status"], health["model"], health["backend"]) == ("ok", "model.onnx", "onnxruntime")
        assert health["images"] == 24 and health["class_names"] == ["0", "1", "7"]
    assert served.imported == [], "the service imports no project code: " + served.stderr[-2000:]


def test_bad_uploads_get_a_4xx_with_a_message_and_the_service_keeps_serving(exported, tmp_path):
    path, row = next(iter(exported["rows"].items()))
    bomb = write_png_bomb(tmp_path / "bomb.png").read_bytes()
    big = bytes(50_000_000)
    large = write_png_bomb(tmp_path / "large.png", 5000, 4000).read_bytes()  # 20 MP in 3 KB: under every byte limit
    bad = [  # (what, send it, status, words of the message)
        ("bomb", lambda url: post_raw(url, bomb), 413, "30000x30000 pixels is over the limit"),
        ("bomb as a file", lambda url: post_file(url, "bomb.png", bomb), 413, "decompression bomb"),
        ("20 MP", lambda url: post_raw(url, large), 413, "5000x4000 pixels is over the limit of 16000000 pixels"),
        ("text", lambda url: post_file(url, "notes.txt", b"just some text, not an image\n"), 415, "not an image"),
        ("50 MB raw", lambda url: post_raw(url, big), 413, "over the limit of 20000000 bytes"),
        ("50 MB file", lambda url: post_file(url, "big.png", big), 413, "over the limit of 20000000 bytes"),
        ("empty", lambda url: post_raw(url, b""), 400, "no image"),
        ("wrong field", lambda url: requests.post(url + "/predict", files={"image": ("a.png", b"x")}, timeout=60),
         400, "the file field 'file'"),
    ]
    with serving(exported["model"], "--topk", "2", "--reject_below", "0.5", cwd=exported["cwd"]) as served:
        for what, send, status, words in bad:
            response = send(served.url)
            assert response.status_code == status, (what, response.status_code, response.text)
            assert words in response.json()["detail"], (what, response.json())
            after = post_raw(served.url, path.read_bytes())  # the next request still works
            assert after.status_code == 200, (what, after.text)
            assert_same_answer(after.json(), row)
        assert served.health()["images"] == len(bad)
    assert "Traceback" not in served.stderr, served.stderr[-3000:]


def test_requests_that_arrive_together_share_a_forward_pass(exported):
    paths = list(exported["rows"])[:8]
    answers: dict[Path, dict] = {}
    start = threading.Barrier(len(paths))

    def client(path: Path) -> None:
        start.wait()
        answers[path] = post_raw(served.url, path.read_bytes()).json()

    with serving(exported["model"], "--topk", "2", "--reject_below", "0.5", "--max_wait_ms", "200", "--max_batch", "8",
                 cwd=exported["cwd"]) as served:
        threads = [threading.Thread(target=client, args=(p,)) for p in paths]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        health = served.health()
    assert max(a["batch_size"] for a in answers.values()) > 1, answers
    assert health["images"] == 8 and health["batches"] < 8 and max(map(int, health["batch_sizes"])) > 1, health
    for path in paths:  # batched or not, each image gets the demo's answer
        assert_same_answer(answers[path], exported["rows"][path])


def test_a_multi_label_export_answers_label_sets_as_the_demo(mosaics, tmp_path):
    ckpt = multi_label_checkpoint(tmp_path / "run", mosaics, image_size=32, thresholds=[0.45, 0.5, 0.55] * 3 + [0.5])
    with contextlib.redirect_stdout(io.StringIO()):
        assert run_main(["--onnx", "--resume", str(ckpt), "--data", str(mosaics), "--dataset", "csv", "-j", "0"]) == 0
    model = tmp_path / "run" / "export" / "model.onnx"
    images = sorted((mosaics / "images" / "test").glob("*.png"))
    proc, imported = run_demo([str(model), str(mosaics / "images" / "test"), "--json"], cwd=tmp_path)
    assert proc.returncode == 0 and imported == [], proc.stderr[-3000:]
    rows = {Path(r["path"]).resolve(): r for r in map(json.loads, proc.stdout.splitlines())}
    with serving(model, cwd=tmp_path) as served:
        for path in images:
            got = post_file(served.url, path.name, path.read_bytes()).json()
            want = rows[path.resolve()]
            assert [label["name"] for label in got["labels"]] == [label["name"] for label in want["labels"]]
            assert list(got["scores"]) == list(want["scores"])
            np.testing.assert_allclose(list(got["scores"].values()), list(want["scores"].values()), atol=1e-6)
    assert served.imported == []


def test_the_benchmark_prints_the_demo_and_the_service_side_by_side(exported, tiny_data):
    args = ["--model", str(exported["model"]), "--data", str(tiny_data["folder"]), "--requests", "16",
            "--clients", "1", "4", "--rounds", "2"]
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "serve.py"), *args], capture_output=True,
                          text=True, timeout=600, cwd=exported["cwd"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [line.split(" | ") for line in proc.stdout.splitlines() if line.startswith("| ") and "---" not in line]
    assert [(r[0], r[1]) for r in rows[1:]] == [("| demo in-process, batch 1", "1"), ("| service POST /predict", "1"),
                                                ("| service POST /predict", "4")]
    assert all(float(r[2]) > 0 and 0 < float(r[4]) <= float(r[5]) for r in rows[1:])  # req/s, p50 <= p99


def test_an_over_long_body_is_refused_without_being_read_and_the_connection_closed(exported):
    path, row = next(iter(exported["rows"].items()))
    head = "POST /predict HTTP/1.1\nHost: 127.0.0.1\nContent-Type: application/octet-stream\n"
    with serving(exported["model"], "--max_bytes", "100000", "--topk", "2", "--reject_below", "0.5",
                 cwd=exported["cwd"]) as served:
        # 10 GB declared, 3 bytes sent: answered at once from the header, not after waiting for the body
        status, answer, seconds = raw_request(served.url, head + "Content-Length: 10000000000\n", [b"abc"])
        assert status == 413 and "10000000000 bytes (its Content-Length)" in answer["detail"], answer
        assert seconds < 3, seconds  # milliseconds; a server reading on would close only at its 5 s idle timeout
        # chunked, never ended: refused once 64 KiB past the limit (the multipart slack), the rest never read
        chunk = b"%x\r\n" % 32768 + bytes(32768) + b"\r\n"
        status, answer, seconds = raw_request(served.url, head + "Transfer-Encoding: chunked\n", [chunk] * 6)
        assert status == 413 and "as it streamed in, over the limit of 100000 bytes" in answer["detail"], answer
        assert seconds < 3, seconds
        after = post_raw(served.url, path.read_bytes())  # the next request still works
        assert after.status_code == 200, after.text
        assert_same_answer(after.json(), row)
        assert served.health()["images"] == 1
    assert "Traceback" not in served.stderr, served.stderr[-3000:]


def test_no_more_than_max_decoding_images_are_decoded_at_once(exported, tmp_path):
    big = write_png_bomb(tmp_path / "big.png", 3000, 3000).read_bytes()  # 9 MP, under the 16 MP limit
    clients = 6
    start = threading.Barrier(clients)
    statuses: list[int] = []

    def client() -> None:
        start.wait()
        statuses.append(post_raw(served.url, big).status_code)

    with serving(exported["model"], "--max_decoding", "2", cwd=exported["cwd"]) as served:
        threads = [threading.Thread(target=client) for _ in range(clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        health = served.health()
    assert statuses == [200] * clients, statuses
    assert (health["max_decoding"], health["max_image_pixels"], health["images"]) == (2, 16_000_000, clients)
    # all six waited on two slots at once: the bound is reached, never passed
    assert health["peak_decoding"] == 2 and health["decoding"] == 0, health
