"""Two-process data-parallel training on CPU (gloo) over small real CT crops."""

from __future__ import annotations

import multiprocessing
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ScreenerCore.config import ConditionConfig, DensityConfig, ModelConfig, NetConfig

# Three CTs on two ranks: rank 0 reads two, rank 1 one.
THIRD_CT = "train/abdomen_crlm1004.nii.gz"
WORLD_SIZE = 2
TIMEOUT_S = 300


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def worker(rank: int, port: int, files: list[str], grid, output: str) -> None:
    """One rank: data-parallel descriptor and flow-density steps; saves what it saw and its parameters."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE=str(WORLD_SIZE))
    torch.set_num_threads(1)
    from screener_training.data import load_training_volumes  # noqa: PLC0415 - imported in the child
    from screener_training.density_training import calibrate, train_density  # noqa: PLC0415
    from screener_training.distributed import init_distributed, shutdown_distributed  # noqa: PLC0415
    from screener_training.embedding_training import train_embedding_net  # noqa: PLC0415
    from screener_training.train import StageConfig  # noqa: PLC0415
    from screener_training.views import ViewConfig  # noqa: PLC0415
    from ScreenerCore.models import ScreenerModel  # noqa: PLC0415

    context = init_distributed("cpu")
    volumes = load_training_volumes(files, grid, Path(output) / "cache", context.rank, context.world_size)
    net_config = NetConfig(in_channels=1, out_channels=4, channels=(4, 8))
    torch.manual_seed(0)
    initial = {key: value.clone() for key, value in ScreenerModel(ModelConfig(
        preprocessing=grid, descriptor=net_config, condition=ConditionConfig(kind="none"))).descriptor.state_dict().items()}
    stage = StageConfig(steps=3, volumes_per_step=1, seed=0, projector_width=16)
    net = train_embedding_net(net_config, volumes, ViewConfig(crop_size=8, positions_per_pair=16), stage, -1.0,
                              context=context)

    config = ModelConfig(preprocessing=grid, descriptor=net_config, condition=ConditionConfig(kind="none"),
                         density=DensityConfig(kind="flow", hidden_channels=8, flow_steps=2))
    model = ScreenerModel(config)
    model.descriptor.load_state_dict(net.state_dict())
    train_density(model, volumes, 8, stage, -1.0, context=context)
    calibration = calibrate(model, volumes, 24, 1, -1.0, border=4, context=context)
    shutdown_distributed()

    torch.save({
        "volumes": [volume.name for volume in volumes],
        "initial": initial,
        "parameters": {name: p.detach() for name, p in net.named_parameters()},
        "gradients": {name: p.grad.detach() for name, p in net.named_parameters() if p.grad is not None},
        "density": {key: value.detach() for key, value in model.density.state_dict().items()},
        "calibration": calibration.scores,
    }, Path(output) / f"rank{rank}.pt")


@pytest.fixture(scope="module")
def ddp_results(small_ct_files, coarse_grid, tmp_path_factory):
    third = small_ct_files[0].parents[1] / THIRD_CT
    if not third.is_file():
        pytest.skip(f"real CT data not found: {third}")
    files = [str(path) for path in (*small_ct_files, third)]
    output = tmp_path_factory.mktemp("ddp")
    port = free_port()
    spawn = multiprocessing.get_context("spawn")
    processes = [spawn.Process(target=worker, args=(rank, port, files, coarse_grid, str(output)))
                 for rank in range(WORLD_SIZE)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(TIMEOUT_S)
    hung = [process for process in processes if process.is_alive()]
    for process in hung:
        process.kill()
    assert not hung, f"{len(hung)} rank(s) still running after {TIMEOUT_S} s: the uneven split hangs"
    assert [process.exitcode for process in processes] == [0] * WORLD_SIZE
    return [torch.load(output / f"rank{rank}.pt", weights_only=False) for rank in range(WORLD_SIZE)]


def test_ranks_read_different_shards(ddp_results):
    first, second = (set(result["volumes"]) for result in ddp_results)

    assert len(ddp_results[0]["volumes"]) == 2
    assert len(ddp_results[1]["volumes"]) == 1
    assert not first & second


def test_both_ranks_step(ddp_results):
    for result in ddp_results:
        changed = [not torch.equal(result["parameters"][name], result["initial"][name])
                   for name in result["parameters"]]
        assert all(changed)


def test_gradients_agree_across_ranks(ddp_results):
    first, second = (result["gradients"] for result in ddp_results)

    assert first.keys() == second.keys()
    assert len(first) > 0
    for name in first:
        torch.testing.assert_close(first[name], second[name], msg=name)


def test_parameters_agree_across_ranks(ddp_results):
    for part in ("parameters", "density"):
        first, second = (result[part] for result in ddp_results)
        for name in first:
            torch.testing.assert_close(first[name], second[name], rtol=0, atol=0, msg=f"{part}.{name}")


def test_calibration_pools_all_ranks(ddp_results):
    torch.testing.assert_close(torch.as_tensor(ddp_results[0]["calibration"]),
                               torch.as_tensor(ddp_results[1]["calibration"]))


def test_torchrun_cli_two_ranks(small_ct_files, tmp_path):
    """The real entry point under torchrun: two gloo ranks train a descriptor and rank 0 writes it once."""
    torchrun = Path(sys.executable).with_name("torchrun")
    if not torchrun.is_file():
        pytest.skip(f"torchrun not found beside {sys.executable}")
    command = [str(torchrun), "--nnodes", "1", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
               "--master-port", str(free_port()), "-m", "screener_training.cli", "descriptor",
               "--data", *map(str, small_ct_files), "--work-dir", str(tmp_path), "--device", "cpu", "--threads", "1",
               "--spacing", "6", "6", "6", "--crop-size", "8", "--channels", "4", "8", "--descriptor-dim", "4",
               "--positions", "16", "--volumes-per-step", "1", "--descriptor-steps", "2", "--projector-width", "16",
               "--log-every", "1"]

    result = subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT_S,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})

    assert result.returncode == 0, result.stderr[-3000:]
    assert "Rank 1 of 2 joined the gloo process group" in result.stderr
    assert (tmp_path / "descriptor.safetensors").is_file()
    assert len((tmp_path / "descriptor_log.csv").read_text().splitlines()) == 1 + 2
