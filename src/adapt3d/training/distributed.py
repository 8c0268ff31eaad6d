"""Data-parallel helpers on plain ``torch.distributed`` (launched by ``torchrun``; gloo on CPU, NCCL on CUDA).

Every process holds full copies of G, G_ema and D. Gradients are summed with one flattened all-reduce per phase
(as EG3D does); the loss of each micro-batch is pre-scaled by its share of the *global* batch, so the sum is the
gradient of the global-batch mean, identical to a single process accumulating the same micro-batches. Rank 0
writes every file; the others only compute.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Iterable

import torch
import torch.distributed as dist
from torch import nn

__all__ = ["DistInfo", "init_distributed", "all_reduce_sum_", "broadcast_module_", "barrier", "world_info"]


@dataclass(frozen=True)
class DistInfo:
    """Rank of this process, number of processes, its local rank (its GPU index) and the backend."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def world_info() -> DistInfo:
    """What the launcher (torchrun) told this process through RANK / WORLD_SIZE / LOCAL_RANK."""
    if dist.is_available() and dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)),
                        dist.get_backend())
    return DistInfo(int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
                    int(os.environ.get("LOCAL_RANK", 0)), None)


def init_distributed(device: torch.device) -> tuple[DistInfo, torch.device]:
    """Join the process group when launched with WORLD_SIZE > 1; returns (info, this process's device).

    CUDA runs use ``cuda:LOCAL_RANK`` and NCCL; CPU runs use gloo.
    """
    info = world_info()
    if info.world_size <= 1:
        return DistInfo(), device
    if device.type == "cuda":
        device = torch.device("cuda", info.local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, timeout=datetime.timedelta(minutes=30))
    return world_info(), device


def all_reduce_sum_(tensors: Iterable[torch.Tensor]) -> None:
    """Sum tensors over all processes, in place, with one flattened all-reduce (no-op in a single process)."""
    tensors = [t for t in tensors if t is not None]
    if not tensors or not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return
    flat = torch.cat([t.reshape(-1) for t in tensors])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    offset = 0
    for t in tensors:
        t.copy_(flat[offset:offset + t.numel()].view_as(t))
        offset += t.numel()


@torch.no_grad()
def broadcast_module_(module: nn.Module, src: int = 0) -> None:
    """Copy every parameter and buffer of ``module`` from rank ``src`` to all processes."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return
    for t in list(module.parameters()) + list(module.buffers()):
        dist.broadcast(t.data, src=src)


def barrier() -> None:
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()
