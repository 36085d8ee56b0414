"""The ``context`` section: the device (GPU, memory, SMs, compute capability, clocks, driver), CUDA, cuDNN,
torch and the CPU."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from benchmarks.gpu_sections.common import Ctx


def nvidia_smi(fields: str) -> dict[str, str] | str:
    """One ``nvidia-smi --query-gpu`` reading of the first GPU, or why there is none."""
    if shutil.which("nvidia-smi") is None:
        return "skipped: nvidia-smi not on PATH"
    r = subprocess.run(["nvidia-smi", f"--query-gpu={fields}", "--format=csv,noheader"], capture_output=True,
                       text=True, timeout=30)
    if r.returncode != 0:
        return f"nvidia-smi failed: {r.stderr.strip()[:200]}"
    return dict(zip(fields.split(","), (v.strip() for v in r.stdout.splitlines()[0].split(","))))


CLOCKS = "clocks.sm,clocks.max.sm,clocks.mem,power.draw,temperature.gpu"


def cpu_name() -> str:
    import platform
    info = Path("/proc/cpuinfo")
    lines = info.read_text().splitlines() if info.is_file() else []
    return next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")),
                platform.processor() or platform.machine())


def section_context(ctx: Ctx) -> None:
    import platform

    import torch

    from config import available_cores
    cpu = cpu_name()
    props = torch.cuda.get_device_properties(0) if ctx.cuda else None
    ctx.rec.data["device"] = props.name if props else f"cpu: {cpu}"
    rows = [("GPU", ctx.cuda_only(lambda: props.name)), ("GPUs visible", ctx.cuda_only(torch.cuda.device_count)),
            ("GPU memory (GiB)", ctx.cuda_only(lambda: round(props.total_memory / 2**30, 1))),
            ("SMs", ctx.cuda_only(lambda: props.multi_processor_count)),
            ("compute capability", ctx.cuda_only(lambda: f"{props.major}.{props.minor}")),
            ("CUDA runtime (torch)", ctx.cuda_only(lambda: torch.version.cuda)),
            ("cuDNN", ctx.cuda_only(lambda: torch.backends.cudnn.version())),
            ("bf16 supported", ctx.cuda_only(torch.cuda.is_bf16_supported)),
            ("nvidia-smi at start", ctx.cuda_only(lambda: nvidia_smi("driver_version,power.limit," + CLOCKS))),
            ("torch", torch.__version__), ("CPU", cpu), ("CPU cores available", available_cores()),
            ("/dev/shm (GiB, the loader workers' batches)", round(shutil.disk_usage("/dev/shm").total / 2**30, 1)
             if Path("/dev/shm").is_dir() else "none"),
            ("python", platform.python_version())]
    for key, value in rows:
        ctx.rec.row(key=key, value=value)
