"""The HTTP service (demos/serve.py) against the deploy demo in-process, on the int8 resnet18 of the digits.

Rows, side by side: the demo's ``Classifier`` called in this process on one image at a time (decode,
preprocess, forward: what a program that imports the demo pays per image), then the service answering
``POST /predict`` (raw body) to 1 and to 8 concurrent clients on 127.0.0.1 (keep-alive connections, a bounded
number of requests each, after a few warm-up ones). Requests per second, p50/p99 latency, and for the service
the mean batch size it ran (from ``/health``). Both the demo and the service run ONNX Runtime with the same
``--threads``; the clients share the machine with the service, as a local client would. The rows take turns,
in ``--rounds`` rounds, so that a change in the machine's load falls on all of them alike.

The model: ``--model FILE`` (an exported ``.onnx``/``.xml``), else ``--resume CKPT`` exported with ``main.py
--onnx --quantize int8``, else a resnet18 trained for ``--epochs`` on the bundled digits with the digits recipe
(z_task_shell/configs/digits_resnet18.yaml, 48x48) and exported so. The images: the digits' test split.

    python benchmarks/serve.py                         # train 2 epochs (a few minutes on 2 cores), export, measure
    python benchmarks/serve.py --resume output/resnet18/digits_baseline/checkpoints/best.pth
    python benchmarks/serve.py --model output/resnet18/digits_baseline/export/model.int8.onnx --requests 200
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "demos"))

from benchmarks.int8_onnx_variants import main_py  # noqa: E402
from benchmarks.trust import RECIPE  # noqa: E402  (the digits recipe)


def export_int8(ckpt: Path, data: Path, max_drop: float) -> tuple[Path, dict]:
    """``main.py --onnx --quantize int8 --resume ckpt``: the int8 file and the summary's int8 entry."""
    summary = main_py("--onnx", "--quantize", "int8", "--resume", str(ckpt), "--data", str(data), "-j", "0",
                      "--max_accuracy_drop", str(max_drop))
    return ckpt.parent.parent / "export" / "model.int8.onnx", summary.get("int8", {})


def train_digits(data: Path, out: Path, epochs: int) -> Path:
    """A resnet18 trained for ``epochs`` with the digits recipe; its best checkpoint."""
    main_py("--train", "--config", str(RECIPE), "--data", str(data), "--output", str(out), "--epochs", str(epochs),
            "--warmup", "0", "-j", "0", "--no_progress", "--tag", "serve_bench")
    return out / "resnet18" / "serve_bench" / "checkpoints" / "best.pth"


def percentiles(latencies: list[float]) -> tuple[float, float]:
    """p50 and p99 of ``latencies`` (seconds) in milliseconds."""
    cuts = statistics.quantiles(latencies, n=100, method="inclusive")
    return 1000 * statistics.median(latencies), 1000 * cuts[98]


def demo_block(clf, images: list[bytes], count: int, offset: int) -> dict:
    """``count`` calls of the demo's Classifier on one image each, in this process."""
    latencies = []
    start = time.perf_counter()
    for i in range(offset, offset + count):
        t = time.perf_counter()
        clf.probabilities([images[i % len(images)]])
        latencies.append(time.perf_counter() - t)
    return {"time": time.perf_counter() - start, "latencies": latencies}


def client_loop(port: int, images: list[bytes], offset: int, count: int, warmup: int, gate: threading.Barrier,
                latencies: list[float]) -> None:
    """One client: ``warmup`` requests, wait for the others, then ``count`` timed ones on one connection."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)

    def post(data: bytes) -> None:
        conn.request("POST", "/predict", body=data, headers={"Content-Type": "application/octet-stream"})
        response = conn.getresponse()
        body = response.read()
        if response.status != 200:
            raise RuntimeError(f"POST /predict answered {response.status}: {body[:300]!r}")

    for i in range(warmup):
        post(images[(offset + i) % len(images)])
    gate.wait()
    for i in range(count):
        t = time.perf_counter()
        post(images[(offset + i) % len(images)])
        latencies.append(time.perf_counter() - t)
    conn.close()


def health(port: int) -> dict:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("GET", "/health")
    answer = json.loads(conn.getresponse().read())
    conn.close()
    return answer


def service_block(port: int, images: list[bytes], clients: int, count: int) -> dict:
    """``clients`` concurrent clients sharing ``count`` timed requests: the wall-clock time, the latencies and
    the images and batches the service ran meanwhile."""
    latencies: list[list[float]] = [[] for _ in range(clients)]
    gate = threading.Barrier(clients + 1)
    threads = [threading.Thread(target=client_loop, args=(port, images, 37 * c, count // clients, 3, gate,
                                                          latencies[c])) for c in range(clients)]
    for t in threads:
        t.start()
    gate.wait()
    before, start = health(port), time.perf_counter()
    for t in threads:
        t.join()
    wall, after = time.perf_counter() - start, health(port)
    done = [x for c in latencies for x in c]
    if len(done) != clients * (count // clients):
        raise RuntimeError("a client failed (see its traceback above)")
    return {"time": wall, "latencies": done, "images": after["images"] - before["images"],
            "batches": after["batches"] - before["batches"]}


def merged(blocks: list[dict]) -> dict:
    """One row of several blocks: requests per second over their summed time, all latencies, the mean batch."""
    row = {"latencies": [x for b in blocks for x in b["latencies"]]}
    row["rps"] = len(row["latencies"]) / sum(b["time"] for b in blocks)
    if "batches" in blocks[0]:
        row["batch"] = sum(b["images"] for b in blocks) / max(1, sum(b["batches"] for b in blocks))
    return row


def start_service(model: Path, port: int, args: argparse.Namespace) -> subprocess.Popen:
    """demos/serve.py on 127.0.0.1:``port``, returned once ``/health`` answers."""
    proc = subprocess.Popen([sys.executable, str(ROOT / "demos" / "serve.py"), str(model), "--port", str(port),
                             "--threads", str(args.threads), "--max_batch", str(args.max_batch),
                             "--max_wait_ms", str(args.max_wait_ms)], stderr=subprocess.DEVNULL)
    end = time.time() + 120
    while time.time() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"demos/serve.py ended with code {proc.returncode}")
        try:
            health(port)
            return proc
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("demos/serve.py did not answer /health within 120 s")


def measure(model: Path, images: list[bytes], args: argparse.Namespace) -> list[tuple[str, int, dict]]:
    """The demo's row and the service's rows, measured in ``--rounds`` rounds that each run every row in turn
    (so that a change of the machine's load while it runs falls on every row alike)."""
    import classifier
    clf = classifier.Classifier(model, threads=args.threads)
    for data in images[:10]:  # warm-up
        clf.probabilities([data])
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = start_service(model, port, args)
    count = args.requests // args.rounds
    blocks: dict[tuple[str, int], list[dict]] = {("demo in-process, batch 1", 1): []}
    try:
        for r in range(args.rounds):
            blocks[("demo in-process, batch 1", 1)].append(demo_block(clf, images, count, r * count))
            for clients in args.clients:
                blocks.setdefault(("service POST /predict", clients), []).append(
                    service_block(port, images, clients, count))
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    return [(name, clients, merged(parts)) for (name, clients), parts in blocks.items()]


def print_table(model: Path, rows: list[tuple[str, int, dict]], args: argparse.Namespace, images: int) -> None:
    demo_rps = rows[0][2]["rps"]
    print(f"\n{model.name}, ONNX Runtime, {args.threads} threads; {args.requests} timed requests per row over "
          f"{images} digit test PNGs; service --max_batch {args.max_batch} --max_wait_ms {args.max_wait_ms:g}; "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    print("| path | clients | req/s | x demo | p50 ms | p99 ms | mean batch |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, clients, r in rows:
        p50, p99 = percentiles(r["latencies"])
        batch = f"{r['batch']:.2f}" if "batch" in r else "1"
        print(f"| {name} | {clients} | {r['rps']:.1f} | {r['rps'] / demo_rps:.2f} | {p50:.2f} | {p99:.2f} | {batch} |")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=None, help="an exported model (skips training and export)")
    parser.add_argument("--resume", type=Path, default=None, help="a checkpoint to export with --quantize int8")
    parser.add_argument("--data", type=Path, default=None,
                        help="the digits folder (default: data/digits, built when missing)")
    parser.add_argument("--work", type=Path, default=None,
                        help="where the trained run (and its export) is kept (default: a temporary folder)")
    parser.add_argument("--epochs", type=int, default=2, help="epochs of the digits recipe when training")
    parser.add_argument("--max_accuracy_drop", type=float, default=5.0, help="the int8 export's guard (points)")
    parser.add_argument("--requests", type=int, default=400, help="timed requests per row")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8], help="concurrent clients per row")
    parser.add_argument("--rounds", type=int, default=4, help="rounds of every row in turn (the requests split)")
    parser.add_argument("--threads", type=int, default=2, help="ONNX Runtime intra-op threads (demo and service)")
    parser.add_argument("--max_batch", type=int, default=8)
    parser.add_argument("--max_wait_ms", type=float, default=5.0)
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    from dataloader.digits import make_digits
    data = args.data or make_digits(ROOT / "data" / "digits")
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model
        if model is None:
            ckpt = args.resume or train_digits(data, (args.work or Path(tmp)) / "out", args.epochs)
            model, int8 = export_int8(ckpt, data, args.max_accuracy_drop)
            print("int8 export:", json.dumps(int8))
        images = [p.read_bytes() for p in sorted((data / "test").rglob("*.png"))]
        rows = measure(model, images, args)
        print_table(model, rows, args, len(images))


if __name__ == "__main__":
    main()
