"""The ``ddp`` section: ``torchrun --nproc_per_node=1`` with NCCL (Gloo on the CPU) and ``--sync_bn``."""
from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.gpu_sections.common import NO_CUDA, ROOT, Ctx, digits_train_args, last_error, run_summary


def section_ddp(ctx: Ctx) -> None:
    with tempfile.TemporaryDirectory(prefix="gpu_check_ddp_") as tmp:
        out = Path(tmp)
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1", "main.py",
               *digits_train_args(ctx, out, "ddp", 1), *(["--sync_bn"] if ctx.cuda else [])]
        start = time.time()
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=ctx.left(),
                              env={**os.environ, "OMP_NUM_THREADS": str(ctx.workers())})
        seconds = time.time() - start
        if proc.returncode != 0:
            raise RuntimeError(f"torchrun exited {proc.returncode}: {last_error(proc.stderr)}")
        group = re.search(r"started the (\w+) process group: rank 0 of (\d+)", proc.stderr)
        log = (out / ctx.prof.digits_arch / "ddp" / "log.txt").read_text()
        expected = "nccl" if ctx.cuda else "gloo"
        summary = run_summary(out, ctx.prof.digits_arch, "ddp")
        sync_bn = "converted to SyncBatchNorm" in log
        ctx.rec.row(run="torchrun --nproc_per_node=1, 1 epoch", backend=group.group(1) if group else "none",
                    processes=int(group.group(2)) if group else 0, ddp="(1 processes)" in log,
                    sync_bn=sync_bn if ctx.cuda else f"{NO_CUDA} (torch's SyncBatchNorm runs on GPUs only)",
                    **summary, seconds=round(seconds, 1))
        ctx.rec.note("with one process SyncBatchNorm has no peer and computes plain batch statistics; the "
                     "conversion, DDP and the process group's collectives run")
        if not group or group.group(1) != expected or "(1 processes)" not in log or sync_bn != ctx.cuda:
            raise RuntimeError(f"expected a {expected} process group running DDP{' with SyncBatchNorm' * ctx.cuda};"
                               f" the run said: group {group.group(0) if group else 'none'}, DDP "
                               f"{'(1 processes)' in log}, SyncBatchNorm {sync_bn}")
