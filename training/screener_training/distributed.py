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


class _GatherWithGradient(torch.autograd.Function):
    """All-gather of rows whose backward pass returns this rank's rows of the gradient summed over ranks.

    Every rank computes the same loss over the gathered batch, so the gradient that reaches a
    rank's own rows is the sum of the W identical gradients, W times the true one.
    DistributedDataParallel then averages parameter gradients over the W ranks, which gives
    exactly the gradient of that loss in a single process over the whole batch.
    """

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        world_size = dist.get_world_size()
        gathered = [torch.empty_like(tensor) for _ in range(world_size)]
        dist.all_gather(gathered, tensor.contiguous())
        ctx.rank, ctx.rows = dist.get_rank(), tensor.shape[0]
        return torch.cat(gathered)

    @staticmethod
    def backward(ctx, gradient: torch.Tensor) -> torch.Tensor:
        gradient = gradient.contiguous()
        dist.all_reduce(gradient)
        return gradient[ctx.rank * ctx.rows:(ctx.rank + 1) * ctx.rows]


def gather_with_gradient(tensor: torch.Tensor, context: DistributedContext) -> torch.Tensor:
    """Concatenate `tensor` (N, ...) from every rank in rank order, keeping gradients to this rank's rows.

    Used so that VICReg's variance and covariance and InfoNCE's negatives see the global batch,
    not one rank's share of it. Every rank must pass the same N (all ranks run one stage
    config, so they sample the same number of positions).
    """
    if not context.is_distributed:
        return tensor
    rows = torch.tensor([tensor.shape[0]], device=tensor.device)
    counts = [torch.zeros_like(rows) for _ in range(context.world_size)]
    dist.all_gather(counts, rows)
    if len({int(count) for count in counts}) > 1:
        raise RuntimeError(f"Ranks have different numbers of embeddings ({[int(c) for c in counts]}); "
                           "every rank must use the same --positions and --volumes-per-step.")
    return _GatherWithGradient.apply(tensor)


def barrier(context: DistributedContext) -> None:
    if context.is_distributed:
        dist.barrier()
