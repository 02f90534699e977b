"""Data-parallel training under torchrun: process group, device and data shard of each rank.

torchrun sets RANK, LOCAL_RANK and WORLD_SIZE (and MASTER_ADDR, MASTER_PORT) for
every process; without them training runs as one process. NCCL is used when each
rank has a GPU, gloo on CPU.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Sequence, TypeVar

import numpy as np
import torch
import torch.distributed as dist

logger = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass
class DistributedContext:
    """Rank of this process among `world_size` processes, and its torch device."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1


def resolve_training_device(request: str, local_rank: int) -> torch.device:
    """Return the device for `request` ('auto', 'cpu', 'cuda'); 'auto' picks this rank's GPU when present."""
    if request == "cpu" or (request == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise RuntimeError(f"Device '{request}' was requested but CUDA is not available; use --device cpu.")
    return torch.device("cuda", local_rank)


def init_distributed(device_request: str = "auto", backend: str | None = None) -> DistributedContext:
    """Join the torchrun process group when WORLD_SIZE > 1, else return a single-process context."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_training_device(device_request, local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if world_size > 1 and not dist.is_initialized():
        backend = backend or ("nccl" if device.type == "cuda" else "gloo")
        dist.init_process_group(backend=backend, rank=rank, world_size=world_size)
        logger.info("Rank %d of %d joined the %s process group on %s", rank, world_size, backend, device)
    return DistributedContext(rank=rank, world_size=world_size, local_rank=local_rank, device=device)


def shutdown_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def shard(items: Sequence[T], rank: int, world_size: int) -> list[T]:
    """Return the items of `rank` in a round-robin split over `world_size` ranks.

    Ranks may get different counts (7 items on 2 ranks give 4 and 3). When there are
    fewer items than ranks, rank r gets item r mod len(items), so no rank is left empty.
    """
    if not items:
        return []
    if len(items) < world_size:
        return [items[rank % len(items)]]
    return list(items[rank::world_size])


def gather_arrays(array: np.ndarray, context: DistributedContext) -> np.ndarray:
    """Concatenate a 1D array from every rank, in rank order, on every rank."""
    if not context.is_distributed:
        return array
    gathered: list = [None] * context.world_size
    dist.all_gather_object(gathered, array)
    return np.concatenate(gathered)


def barrier(context: DistributedContext) -> None:
    if context.is_distributed:
        dist.barrier()
