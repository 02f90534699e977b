"""Losses over the global batch under data parallelism: two gloo ranks against one process.

Each rank embeds its own inputs with a small linear net wrapped in DistributedDataParallel,
gathers the embeddings of both ranks, and steps on the loss of the whole batch. The loss
and the averaged gradient must equal those of a single process that embeds both ranks'
inputs at once.
"""

from __future__ import annotations

import multiprocessing
import os
import socket

import pytest
import torch

WORLD_SIZE = 2
ROWS_PER_RANK = 12
FEATURES, EMBEDDING = 5, 4
TIMEOUT_S = 120


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def rank_inputs(rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The two views' inputs (ROWS_PER_RANK, FEATURES) of one rank; the second is a perturbed first."""
    generator = torch.Generator().manual_seed(100 + rank)
    first = torch.randn(ROWS_PER_RANK, FEATURES, generator=generator)
    return first, first + 0.3 * torch.randn(ROWS_PER_RANK, FEATURES, generator=generator)


def make_net() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Linear(FEATURES, EMBEDDING)


def loss_of(objective: str, z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
    from screener_training.losses import infonce_loss, vicreg_loss  # noqa: PLC0415 - imported in the child

    return (vicreg_loss(z1, z2) if objective == "vicreg" else infonce_loss(z1, z2, 0.5))[0]


def worker(rank: int, port: int, output: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE=str(WORLD_SIZE))
    torch.set_num_threads(1)
    from torch.nn.parallel import DistributedDataParallel  # noqa: PLC0415

    from screener_training.distributed import (  # noqa: PLC0415
        gather_with_gradient, init_distributed, shutdown_distributed)

    context = init_distributed("cpu")
    first, second = rank_inputs(rank)
    results = {}
    for objective in ("vicreg", "infonce"):
        net = make_net()
        parallel = DistributedDataParallel(net)
        z1 = gather_with_gradient(parallel(first), context)
        z2 = gather_with_gradient(parallel(second), context)
        loss = loss_of(objective, z1, z2)
        loss.backward()
        results[objective] = {"loss": loss.detach(), "gradients": {n: p.grad.clone() for n, p in net.named_parameters()}}
    shutdown_distributed()
    torch.save(results, os.path.join(output, f"rank{rank}.pt"))


@pytest.fixture(scope="module")
def rank_results(tmp_path_factory):
    output = tmp_path_factory.mktemp("ddp_losses")
    spawn = multiprocessing.get_context("spawn")
    port = free_port()
    processes = [spawn.Process(target=worker, args=(rank, port, str(output))) for rank in range(WORLD_SIZE)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(TIMEOUT_S)
    for process in processes:
        if process.is_alive():
            process.kill()
    assert [process.exitcode for process in processes] == [0] * WORLD_SIZE
    return [torch.load(output / f"rank{rank}.pt") for rank in range(WORLD_SIZE)]


def single_process(objective: str) -> dict:
    """Loss and gradients of one process over both ranks' inputs, concatenated in rank order."""
    inputs = [rank_inputs(rank) for rank in range(WORLD_SIZE)]
    net = make_net()
    z1 = net(torch.cat([first for first, _ in inputs]))
    z2 = net(torch.cat([second for _, second in inputs]))
    loss = loss_of(objective, z1, z2)
    loss.backward()
    return {"loss": loss.detach(), "gradients": {n: p.grad.clone() for n, p in net.named_parameters()}}


@pytest.mark.parametrize("objective", ["vicreg", "infonce"])
def test_each_rank_computes_the_global_batch_loss(rank_results, objective):
    expected = single_process(objective)["loss"]

    for result in rank_results:
        torch.testing.assert_close(result[objective]["loss"], expected)


@pytest.mark.parametrize("objective", ["vicreg", "infonce"])
def test_averaged_gradients_equal_the_global_batch_gradients(rank_results, objective):
    expected = single_process(objective)["gradients"]

    for result in rank_results:
        for name, gradient in expected.items():
            torch.testing.assert_close(result[objective]["gradients"][name], gradient, msg=name)


def test_per_rank_losses_would_differ(rank_results):
    """Guard that the test can fail: one rank's share alone gives another loss than the global batch."""
    first, second = rank_inputs(0)
    net = make_net()
    local = loss_of("vicreg", net(first), net(second)).detach()

    assert not torch.allclose(local, rank_results[0]["vicreg"]["loss"])
