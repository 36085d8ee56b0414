"""Distributed data parallel helpers: process-group set-up from torchrun's environment, and gathers.

``torchrun`` (or SLURM through ``z_task_shell/slurm_train.sh``) sets RANK, WORLD_SIZE, LOCAL_RANK,
MASTER_ADDR and MASTER_PORT; without them everything here is a single-process no-op. A launched run
starts its process group even with one process (``torchrun --nproc_per_node=1``), as torchvision's
reference scripts do, so that DDP, NCCL and ``--sync_bn`` can be checked on a machine with one GPU.
"""
from __future__ import annotations

import datetime
import logging
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands: its rank, the world size, its device, and whether a process group
    runs (``distributed``: launched by torchrun/SLURM, with one process or more)."""
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    distributed: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def env_world_size() -> int:
    """WORLD_SIZE from the launcher's environment (1 when not launched by torchrun/SLURM)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def launched() -> bool:
    """True when a launcher (torchrun, torch.distributed.launch, SLURM's script) started this process."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def init_distributed(device_arg: str | None) -> DistInfo:
    """Start the process group when launched by torchrun: NCCL on CUDA, Gloo on the CPU.

    Each process takes ``cuda:LOCAL_RANK`` (or the device given by ``--device``, whose index is then
    offset by the local rank). Misconfigurations fail with the variable to change.
    """
    from utils.misc import resolve_device
    world = env_world_size()
    if world <= 1 and not launched():
        return DistInfo(device=resolve_device(device_arg))
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", world))
    use_cuda = torch.cuda.is_available() and (device_arg is None or device_arg.startswith("cuda"))
    if use_cuda:
        base = (torch.device(device_arg).index or 0) if device_arg else 0
        count = torch.cuda.device_count()
        if base + local_world > count:
            raise ValueError(f"{local_world} processes per node from device cuda:{base} need {base + local_world} "
                             f"GPUs but this machine has {count}: lower torchrun's --nproc_per_node "
                             f"(LOCAL_WORLD_SIZE) or pick another --device")
        device = torch.device(f"cuda:{base + local_rank}")
        torch.cuda.set_device(device)
        backend = "nccl"
    else:
        device, backend = torch.device("cpu"), "gloo"
    if not dist.is_initialized():
        try:
            dist.init_process_group(backend, timeout=datetime.timedelta(minutes=30))
        except (RuntimeError, ValueError) as e:
            addr, port = os.environ.get("MASTER_ADDR"), os.environ.get("MASTER_PORT")
            raise ValueError(f"cannot start the {backend} process group at {addr}:{port} ({e}); if the port is "
                             f"in use pick another with torchrun --master_port (MASTER_PORT) or "
                             f"--rdzv_endpoint HOST:PORT") from None
    logger.info("started the %s process group: rank %d of %d on %s", backend, rank, world, device)
    return DistInfo(rank=rank, world_size=world, local_rank=local_rank, device=device, distributed=True)


def cleanup() -> None:
    """Destroy the process group if one is running."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def all_reduce_sum(values: list[float], device: torch.device) -> list[float]:
    """Element-wise sum of ``values`` over every rank (identity without a process group)."""
    if not (dist.is_available() and dist.is_initialized()):
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def any_rank(flag: bool, device: torch.device) -> bool:
    """True on every rank when ``flag`` is true on any (so all ranks stop at the same step)."""
    return bool(all_reduce_sum([float(flag)], device)[0] > 0)


def gather_objects(obj: Any) -> list[Any]:
    """``obj`` of every rank, in rank order (``[obj]`` without a process group)."""
    if not (dist.is_available() and dist.is_initialized()):
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out
