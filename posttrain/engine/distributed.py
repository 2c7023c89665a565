"""torch.distributed set-up from ``torchrun``'s environment, and the few collectives the engine needs.

``torchrun --nproc_per_node=N -m posttrain.cli sft ...`` sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
``MASTER_ADDR`` and ``MASTER_PORT``; :func:`init` reads them and starts a process group (NCCL when the
device is CUDA, gloo otherwise). Without those variables everything here is a cheap no-op for one process,
so the same stage code runs single-process and distributed.

:func:`teardown` (registered with ``atexit`` by :func:`init`, and safe to call earlier) ends with
``dist.barrier(); dist.destroy_process_group()``: without the barrier rank 0 may exit (and tear down the store)
while another rank still talks to it, which aborts the job at exit.
"""

from __future__ import annotations

import atexit
import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def env_world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def init(device: torch.device | str | None = None, *, timeout_s: float = 1800.0) -> DistInfo:
    """Start the process group when launched by torchrun (idempotent); return this process's place.

    ``device`` decides the backend: NCCL for CUDA, gloo otherwise. On CUDA the current device is set to
    ``cuda:LOCAL_RANK``."""
    world = env_world_size()
    if world <= 1:
        return DistInfo()
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        dev = torch.device(device) if device is not None else torch.device("cpu")
        backend = "nccl" if dev.type == "cuda" else "gloo"
        if dev.type == "cuda":
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend=backend, rank=rank, world_size=world,
                                timeout=timedelta(seconds=timeout_s))
        atexit.register(teardown)  # barrier + destroy at exit, so no rank aborts while others finish
    return DistInfo(rank=rank, world_size=world, local_rank=local_rank)


def current() -> DistInfo:
    """This process's place (rank 0 of 1 when no process group is running)."""
    if not (dist.is_available() and dist.is_initialized()):
        return DistInfo()
    return DistInfo(rank=dist.get_rank(), world_size=dist.get_world_size(),
                    local_rank=int(os.environ.get("LOCAL_RANK", "0")))


def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return current().rank


def world_size() -> int:
    return current().world_size


def is_main() -> bool:
    return current().rank == 0


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum ``t`` over ranks in place (and return it). A no-op for one process."""
    if is_initialized():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def all_reduce_max(t: torch.Tensor) -> torch.Tensor:
    if is_initialized():
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t


def barrier() -> None:
    if is_initialized():
        dist.barrier()


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every rank (pickled)."""
    if not is_initialized():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_gather_object(obj: Any) -> list[Any]:
    if not is_initialized():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def teardown() -> None:
    """``dist.barrier(); dist.destroy_process_group()`` when a process group is running."""
    if dist.is_available() and dist.is_initialized():
        try:
            dist.barrier()
        finally:
            dist.destroy_process_group()
