"""--dataset wds end to end: digits shards written by ``utils/make_digits.py --wds`` and by a second writer
(stdlib tarfile + a hand-written _info.json) train within a shuffle's difference of the class folders; shards
served over HTTP train exactly like the same shards on disk; under torchrun (2 ranks x 2 workers) every
training sample is read once per epoch; a run killed mid-epoch resumes within one shard per worker."""
from __future__ import annotations

import functools
import http.server
import io
import json
import os
import re
import subprocess
import sys
import tarfile
import threading
from collections import Counter
from pathlib import Path

import pytest

from helpers import ROOT, read_json, run_main

TIMING_KEYS = ("time", "img_per_s")
# test top-1 points between shards and folders: the shards' shuffle is another order (seed 3: 83.0 vs 82.2;
# two-epoch runs of other seeds and recipes spread far more, hence this recipe)
MARGIN = 8.0


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> dict[str, Path]:
    """The digits as class folders and as converter shards of 100 samples (13 train shards)."""
    tmp = tmp_path_factory.mktemp("wds")
    r = subprocess.run([sys.executable, "utils/make_digits.py", "--out", str(tmp / "digits"), "--wds",
                        str(tmp / "shards"), "--shard_samples", "100"], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return {"folder": tmp / "digits", "wds": tmp / "shards", "tmp": tmp}


def train_args(data, out, dataset, tag, *extra):
    return ["--train", "--data", str(data), "--dataset", dataset, "--arch", "simple_cnn", "--image_size", "16", "16",
            "-b", "8", "-j", "0", "--epochs", "2", "--optimizer", "adamw", "--lr", "0.002", "--warmup", "0", "--seed",
            "3", "--output", str(out), "--tag", tag, "--no_progress", *extra]


def top1_of(run_dir: Path) -> float:
    return read_json(run_dir / "metrics.json")["test"]["test_top1"]


@pytest.fixture(scope="module")
def folder_top1(digits) -> float:
    assert run_main(train_args(digits["folder"], digits["tmp"] / "out", "folder", "folder")) == 0
    return top1_of(digits["tmp"] / "out/simple_cnn/folder")


def stdlib_shards(folder: Path, out: Path, per_shard: int = 150) -> Path:
    """Shards written without this project's code: tarfile, ``KEY.png`` + ``KEY.cls``, a hand-written _info.json
    (timm's keys, no class list: the labels are the folder names 0..9)."""
    out.mkdir()
    info = {"name": "digits", "splits": {}}
    for split, name in (("train", "train"), ("val", "validation"), ("test", "test")):
        files = sorted((folder / split).glob("*/*.png"), key=lambda p: p.stem)  # interleaves the classes
        names, lengths = [], []
        for i in range(0, len(files), per_shard):
            names.append(f"{name}-{i // per_shard:04d}.tar")
            lengths.append(len(files[i:i + per_shard]))
            with tarfile.open(out / names[-1], "w") as tar:
                for path in files[i:i + per_shard]:
                    tar.add(path, f"{path.stem}.png")
                    label = path.parent.name.encode()
                    member = tarfile.TarInfo(f"{path.stem}.cls")
                    member.size = len(label)
                    tar.addfile(member, io.BytesIO(label))
        info["splits"][name] = {"name": name, "filenames": names, "shard_lengths": lengths,
                                "num_samples": sum(lengths)}
    (out / "_info.json").write_text(json.dumps(info))
    return out


@pytest.mark.parametrize("writer", ["converter", "stdlib"])
def test_shards_train_like_the_folders(digits, folder_top1, writer):
    data = digits["wds"] if writer == "converter" else stdlib_shards(digits["folder"], digits["tmp"] / "stdlib")
    assert run_main(train_args(data, digits["tmp"] / "out", "wds", writer)) == 0
    run = digits["tmp"] / "out/simple_cnn" / writer
    history = read_json(run / "metrics.json")["history"]
    assert len(history) == 2
    assert abs(top1_of(run) - folder_top1) <= MARGIN, (top1_of(run), folder_top1)
    assert top1_of(run) > 70  # it learned (10 classes: chance is 10)
    assert read_json(run / "eval_test/metrics.json")["count"] == 270  # every test sample once
    if writer == "converter":  # the checkpoint evaluates on its own shards (no --data, no --dataset), -j 2
        out = run / "predictions.json"
        assert run_main(["--evaluation", "--resume", str(run / "checkpoints/best.pth"), "-j", "2", "--out", str(out),
                         "--no_progress"]) == 0
        assert read_json(run / "eval_test/metrics.json")["top1"] == top1_of(run)
        rows = read_json(out)
        assert len({row["path"] for row in rows}) == 270 and rows[0]["path"].startswith("test-000000.tar/")


def history(run_dir):
    return [{k: v for k, v in row.items() if k not in TIMING_KEYS}
            for row in read_json(run_dir / "metrics.json")["history"]]


def test_shards_over_http_train_like_local_shards(digits):
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(digits["wds"]))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/"
        extra = ("--epochs", "1", "-j", "2", "-b", "32")
        assert run_main(train_args(url, digits["tmp"] / "out", "wds", "http", *extra)) == 0
    finally:
        server.shutdown()
    assert run_main(train_args(digits["wds"], digits["tmp"] / "out", "wds", "local", *extra)) == 0
    runs = digits["tmp"] / "out/simple_cnn"
    assert history(runs / "http") == history(runs / "local")
    assert top1_of(runs / "http") == top1_of(runs / "local")


def read_keys(prefix: Path) -> tuple[dict[str, Counter], set[str]]:
    """The keys the workers recorded (``PLAYGROUND_SAMPLE_KEYS``), per epoch, over every rank and worker."""
    seen: dict[str, Counter] = {}
    files = list(prefix.parent.glob(prefix.name + ".r*w*"))
    for file in files:
        for line in file.read_text().splitlines():
            epoch, key = line.split(" ", 1)
            if key.startswith("train-"):  # not the val and test splits the run also reads
                seen.setdefault(epoch, Counter())[key] += 1
    return seen, {f.name.rsplit(".", 1)[1] for f in files}


@pytest.mark.slow
def test_torchrun_two_ranks_two_workers_read_every_sample_once(digits, tmp_path):
    keys = tmp_path / "keys"
    args = train_args(digits["wds"], tmp_path, "wds", "ddp", "-j", "2", "--epochs", "2", "-b", "32")
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "main.py",
                        *args], cwd=ROOT, capture_output=True, text=True, timeout=600,
                       env={**os.environ, "OMP_NUM_THREADS": "1", "PLAYGROUND_SAMPLE_KEYS": str(keys)})
    assert r.returncode == 0, r.stderr[-3000:]
    seen, writers = read_keys(keys)
    assert writers == {"r0w0", "r0w1", "r1w0", "r1w1"}  # both ranks, both workers read
    info = read_json(digits["wds"] / "_info.json")["splits"]["train"]
    for epoch in ("0", "1"):
        counts = seen[epoch]
        assert max(counts.values()) == 1  # never a sample twice in one epoch
        assert sum(counts.values()) == 2 * (info["num_samples"] // 2)  # all but the documented remainder


def test_killed_mid_epoch_resumes_within_a_shard_per_worker(digits, tmp_path):
    """--save_every_steps 10, SIGKILL after step 25 of 39 (-b 32, 1257 samples, 2 workers): the rerun resumes at
    batch 21 (sample 640), skips the shards its workers had read, says so, and ends the epoch at its length."""
    args = train_args(digits["wds"], tmp_path, "wds", "resume", "-j", "2", "-b", "32", "--epochs", "1",
                      "--save_every_steps", "10")
    killed = subprocess.run([sys.executable, "main.py", *args], cwd=ROOT, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "OMP_NUM_THREADS": "1", "PLAYGROUND_KILL_AT": "step:25"})
    assert killed.returncode == -9, killed.stderr[-3000:]
    keys = tmp_path / "keys"
    r = subprocess.run([sys.executable, "main.py", *args], cwd=ROOT, capture_output=True, text=True, timeout=300,
                       env={**os.environ, "OMP_NUM_THREADS": "1", "PLAYGROUND_SAMPLE_KEYS": str(keys)})
    assert r.returncode == 0, r.stderr[-3000:]
    log = (tmp_path / "simple_cnn/resume/log.txt").read_text()
    assert re.search(r"resumed from \S+ at epoch 1, batch 21", log), log[-3000:]
    again = re.search(r"resuming epoch 1 of the shards at sample 640 of this rank's 1257: .* \((\d+) samples read "
                      r"again\)", log)
    assert again, log[-3000:]
    assert int(again.group(1)) < 2 * 100  # at most one shard per worker read again (100-sample shards)
    seen, _ = read_keys(keys)
    assert max(seen["0"].values()) == 1 and sum(seen["0"].values()) >= 1257 - 640
    assert len(read_json(tmp_path / "simple_cnn/resume/metrics.json")["history"]) == 1
