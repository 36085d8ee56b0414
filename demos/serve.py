#!/usr/bin/env python
"""Serve an exported classifier over HTTP, with a web page, without the project.

    python demos/serve.py MODEL [--host 127.0.0.1] [--port 8000] [--topk 5] [--reject_below P]
                          [--max_batch 8] [--max_wait_ms 5] [--max_bytes 20000000] [--max_image_pixels 16000000]
                          [--max_decoding N]

``MODEL`` is any file demos/classifier.py reads (TorchScript ``.pt``, ONNX ``.onnx`` fp32 or int8, OpenVINO
``.xml`` fp32 or int8): this service imports that demo as its sibling (its decoding, preprocessing, backends and
result rows, so an image gets exactly the demo's answer) and FastAPI + uvicorn, nothing of the project.

- ``POST /predict``: one image, as the multipart field ``file`` (an HTML form, ``curl -F file=@cat.jpg``) or
  as the raw request body (``curl --data-binary @cat.jpg``). The answer is the demo's ``--json`` row without
  its path: a single-label export's ``topk`` (``[[name, p], ...]``), ``probabilities`` and ``answer`` (the top
  class, or ``unknown`` below ``--reject_below``); a multi-label export's ``labels`` and ``scores``; and
  ``batch_size``, the number of images in the forward pass that computed it.
- ``GET /health``: the model, its classes, its limits, the batches run so far (how many of each size), and the
  decodes running now and at most at once (``decoding``, ``peak_decoding``).
- ``GET /``: a page (demos/serve.html) to pick or drop images and see each one's top-k bars.

Requests that arrive together are batched, up to ``--max_batch`` images per forward pass: the images that
queue while a pass runs make the next one, and a pass waits at most ``--max_wait_ms`` after its first image for
the requests still being uploaded and decoded (none arriving: no wait, so a lone client pays none).

A bad upload is refused with a 4xx and a JSON ``{"detail": message}`` and the service keeps serving: an
empty body or no ``file`` field (400); over ``--max_bytes`` (413: from its Content-Length before a byte of the
body is read, or, sent chunked, as soon as it passes the limit; the connection is then closed, the rest never
read); more than ``--max_image_pixels`` pixels (413, refused from its header before decoding); or not an image
the demo can decode (415).

Memory: decoding an image peaks at about 10 bytes a pixel, so the service's pixel limit is 16 megapixels (a
4000x4000 photo, 160 MB to decode), not Pillow's desktop 89.5 (a 9400x9400 PNG of one colour is 280 KB and
takes 850 MB); and at most ``--max_decoding`` images (default: the CPU count) are decoded at once, the others
wait their turn, so the memory of decoding is bounded by the two flags together."""
from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import time
from collections import Counter
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, AsyncIterator, Iterator

import torch
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse
from starlette.concurrency import run_in_threadpool

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling demo, however this file is started
import classifier as demo  # noqa: E402

PAGE = Path(__file__).resolve().parent / "serve.html"
DEFAULT_MAX_BYTES = 20_000_000
DEFAULT_MAX_IMAGE_PIXELS = 16_000_000  # a 4000x4000 photo; the command-line demo keeps Pillow's 89.5 million
MULTIPART_SLACK = 65536  # room for the multipart headers around the file
log = logging.getLogger("serve")


class Refused(Exception):
    """An upload the service answers with ``status`` and ``message`` (a 4xx), then keeps serving."""

    def __init__(self, status: int, message: str, close: bool = False):
        super().__init__(message)
        self.status, self.message, self.close = status, message, close  # close: the body is left unread


@dataclass
class DecodeGate:
    """At most ``limit`` uploads decoded at once (each holds its decoded image until it is preprocessed); the
    others wait their turn. ``active`` and ``peak`` (the most at once so far) are reported by /health."""
    limit: int
    active: int = 0
    peak: int = 0

    def __post_init__(self) -> None:
        self.slots = asyncio.Semaphore(self.limit)

    async def __aenter__(self) -> None:
        await self.slots.acquire()
        self.active += 1
        self.peak = max(self.peak, self.active)

    async def __aexit__(self, *_: object) -> None:
        self.active -= 1
        self.slots.release()


@dataclass
class Pending:
    """One preprocessed image waiting for its batch, and the future its request awaits."""
    image: torch.Tensor
    done: asyncio.Future


@dataclass
class Batcher:
    """Groups images into forward passes of at most ``max_batch``, one pass at a time, off the event loop.
    Images that queue up while a pass runs make the next one; and a pass waits up to ``max_wait_ms`` after
    its first image for the requests still arriving (reading their upload, decoding it), but not when none
    is: a lone client pays no wait."""
    clf: demo.Classifier
    max_batch: int
    max_wait_ms: float
    queue: asyncio.Queue = field(default_factory=asyncio.Queue)
    sizes: Counter = field(default_factory=Counter)
    arriving: int = 0  # requests between their start and their image's place in the queue

    @contextmanager
    def arrival(self) -> Iterator[None]:
        """Counts a request as arriving while its upload is read and decoded."""
        self.arriving += 1
        try:
            yield
        finally:
            self.arriving -= 1

    def enqueue(self, image: torch.Tensor) -> asyncio.Future:
        """A future of the probabilities of one preprocessed image and the size of the batch that computed them."""
        pending = Pending(image, asyncio.get_running_loop().create_future())
        self.queue.put_nowait(pending)
        return pending.done

    async def run(self) -> None:
        """Forever: wait for an image, gather those queued or arriving until the batch is full or the wait is
        over, classify."""
        while True:
            batch = [await self.queue.get()]
            deadline = time.monotonic() + self.max_wait_ms / 1000
            while len(batch) < self.max_batch:
                if not self.queue.empty():
                    batch.append(self.queue.get_nowait())
                    continue
                left = deadline - time.monotonic()
                if not self.arriving or left <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(self.queue.get(), left))
                except asyncio.TimeoutError:
                    break
            await self._classify(batch)

    async def _classify(self, batch: list[Pending]) -> None:
        try:
            probs = await run_in_threadpool(self.clf.classify, torch.stack([p.image for p in batch]))
        except Exception as e:  # the model does not fit its metadata: every waiting request gets the reason
            for p in batch:
                if not p.done.done():
                    p.done.set_exception(e)
            return
        self.sizes[len(batch)] += 1
        for p, row in zip(batch, probs):
            if not p.done.done():  # its client may have gone
                p.done.set_result((row, len(batch)))


async def read_upload(request: Request, max_bytes: int) -> bytes:
    """The image of a request: its multipart field ``file``, or its raw body. Over ``max_bytes`` it is refused
    from its Content-Length before the body is read, or (sent chunked) as soon as it passes the limit; either way
    the rest is never read and the connection is closed after the 413 (an endless upload holds nothing)."""
    limit, declared = max_bytes + MULTIPART_SLACK, request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise Refused(413, f"the upload is {declared} bytes (its Content-Length), over the limit of {max_bytes} "
                           f"bytes (--max_bytes); not read", close=True)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise Refused(413, f"the upload passed {size} bytes as it streamed in, over the limit of {max_bytes} "
                               f"bytes (--max_bytes); the rest was not read", close=True)
        chunks.append(chunk)
    body = b"".join(chunks)
    if request.headers.get("content-type", "").startswith("multipart/form-data"):
        body = await multipart_file(request, body)
    if len(body) > max_bytes:
        raise Refused(413, f"the image is {len(body)} bytes, over the limit of {max_bytes} bytes (--max_bytes)")
    if not body:
        raise Refused(400, "no image: send one as the multipart field 'file' or as the request body")
    return body


async def multipart_file(request: Request, body: bytes) -> bytes:
    """The bytes of the field ``file`` of a multipart body already read, parsed by Starlette."""
    async def replay() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}
    try:
        async with Request(request.scope, replay).form(max_files=1, max_fields=16) as form:
            upload = form.get("file")
            if upload is None or isinstance(upload, str):
                raise Refused(400, f"a multipart upload needs the image as the file field 'file' (got the fields "
                                   f"{sorted(form.keys())})")
            return await upload.read()
    except Refused:
        raise
    except Exception as e:  # Starlette's MultiPartException and python-multipart's parse errors
        raise Refused(400, f"a malformed multipart body: {e}") from None


def load_image(clf: demo.Classifier, data: bytes) -> torch.Tensor:
    """The demo's decoding and preprocessing of one upload; a bomb or an undecodable file is refused."""
    try:
        return clf.load(data)
    except demo.ImageTooLarge as e:
        raise Refused(413, str(e)) from None
    except Exception as e:  # Pillow raises many types for files it cannot read
        raise Refused(415, f"not an image this service can decode ({type(e).__name__}: {e})") from None


def answer(clf: demo.Classifier, probs: torch.Tensor, topk: int, reject_below: float | None) -> dict[str, Any]:
    """The demo's ``--json`` row of one image's probabilities; single-label rows always carry ``answer``."""
    if clf.multi_label:
        return demo.label_set_rows(clf, probs[None])[0]
    row = demo.topk_rows(clf, probs[None], topk, reject_below)[0]
    return {"answer": row["topk"][0][0], **row}


def create_app(clf: demo.Classifier, topk: int = 5, reject_below: float | None = None, max_batch: int = 8,
               max_wait_ms: float = 5.0, max_bytes: int = DEFAULT_MAX_BYTES, max_decoding: int = 1) -> FastAPI:
    """The service's FastAPI application around a loaded classifier (whose ``max_pixels`` bounds each image)."""
    batcher, gate = Batcher(clf, max_batch, max_wait_ms), DecodeGate(max_decoding)
    html = PAGE.read_text(encoding="utf-8")  # the page, read once

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        worker = asyncio.create_task(batcher.run())
        yield
        worker.cancel()

    app = FastAPI(title=f"classifier: {clf.path.name}", lifespan=lifespan)

    @app.exception_handler(Refused)
    async def refused(_: Request, e: Refused) -> JSONResponse:
        log.info("refused (%d): %s", e.status, e.message)
        return JSONResponse({"detail": e.message}, status_code=e.status,
                            headers={"Connection": "close"} if e.close else None)

    @app.post("/predict")
    async def predict(request: Request) -> Any:
        with batcher.arrival():
            data = await read_upload(request, max_bytes)
            async with gate:  # the thread finishes its decode even if this request is cancelled meanwhile
                image = await run_in_threadpool(load_image, clf, data)
            done = batcher.enqueue(image)
        try:
            probs, size = await done
        except ValueError as e:  # the model does not fit its own metadata (the demo's check): not the upload's fault
            return JSONResponse({"detail": str(e)}, status_code=500)
        return {**answer(clf, probs, topk, reject_below), "batch_size": size}

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "model": clf.path.name, "backend": clf.backend_name, "multi_label": clf.multi_label,
                "class_names": clf.class_names, "topk": topk, "reject_below": reject_below,
                "max_batch": max_batch, "max_wait_ms": max_wait_ms, "max_bytes": max_bytes,
                "max_image_pixels": clf.preprocessor.max_pixels, "max_decoding": gate.limit,
                "decoding": gate.active, "peak_decoding": gate.peak,
                "batches": sum(batcher.sizes.values()), "images": sum(k * v for k, v in batcher.sizes.items()),
                "batch_sizes": {str(k): v for k, v in sorted(batcher.sizes.items())}}

    @app.get("/", response_class=HTMLResponse)
    async def page() -> str:
        return html

    return app


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Serve a model exported by main.py --jit/--onnx/--openvino over "
                                                 "HTTP: POST /predict, GET /health, GET / (a web page).")
    parser.add_argument("model", help="model_jit.pt (TorchScript), model[.int8].onnx or model[.int8].xml (OpenVINO)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: this machine only)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--backend", choices=["auto", *demo.BACKENDS], default="auto",
                        help="auto: ONNX Runtime for .onnx, OpenVINO for .xml, TorchScript otherwise")
    parser.add_argument("--threads", type=int, default=None, help="intra-op threads (default: the library's)")
    parser.add_argument("--topk", type=int, default=5, help="classes answered per image (single-label)")
    parser.add_argument("--reject_below", type=float, default=None, metavar="P",
                        help="answer unknown when the top probability is below P (single-label)")
    parser.add_argument("--max_batch", type=int, default=8, help="images per forward pass at most")
    parser.add_argument("--max_wait_ms", type=float, default=5.0,
                        help="how long a batch waits after its first image for requests still arriving (0: no wait)")
    parser.add_argument("--max_bytes", type=int, default=DEFAULT_MAX_BYTES, help="largest upload accepted, in bytes")
    parser.add_argument("--max_image_pixels", type=int, default=DEFAULT_MAX_IMAGE_PIXELS,
                        help="refuse images of more pixels, from their header, before decoding (default: 16 "
                             "megapixels, a 4000x4000 photo; 0 = no limit)")
    parser.add_argument("--max_decoding", type=int, default=os.cpu_count() or 1,
                        help="images decoded at once at most, the others wait (default: the CPU count); with "
                             "--max_image_pixels it bounds the memory decoding takes")
    args = parser.parse_args(argv)
    if min(args.topk, args.max_batch, args.max_bytes, args.max_decoding) < 1:
        parser.error("--topk, --max_batch, --max_bytes and --max_decoding must be >= 1")
    if args.max_wait_ms < 0 or args.max_image_pixels < 0:
        parser.error("--max_wait_ms and --max_image_pixels must be >= 0")
    if args.reject_below is not None and not 0 < args.reject_below <= 1:
        parser.error(f"--reject_below must be a probability in (0, 1], got {args.reject_below}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(message)s")
    try:
        clf = demo.Classifier(args.model, args.backend, args.threads, args.max_image_pixels)
        if clf.multi_label and args.reject_below is not None:
            raise ValueError(f"--reject_below is for single-label exports: {args.model} is multi-label")
    except Exception as e:  # a missing file, or a model the backend cannot load: one line, no traceback
        print(demo.error_line("serve.py", e), file=sys.stderr)
        return 1
    app = create_app(clf, args.topk, args.reject_below, args.max_batch, args.max_wait_ms, args.max_bytes,
                     args.max_decoding)
    log.info("serving %s (%s) on http://%s:%d", clf.path.name, clf.backend_name, args.host, args.port)
    with demo.own_pixel_check():  # once, before any request: --max_image_pixels alone refuses images
        uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0


if __name__ == "__main__":
    sys.exit(main())
