"""A stage stopped at a checkpoint and resumed ends with the parameters of an uninterrupted run."""

from __future__ import annotations

import csv

import torch

from ScreenerCore.config import ConditionConfig, DensityConfig, ModelConfig, NetConfig
from ScreenerCore.models import ScreenerModel
from screener_training.checkpoint import CheckpointConfig
from screener_training.density_training import train_density
from screener_training.embedding_training import train_embedding_net
from screener_training.train import StageConfig
from screener_training.views import ViewConfig

NET = NetConfig(in_channels=1, out_channels=4, channels=(4, 8))
VIEWS = ViewConfig(crop_size=8, positions_per_pair=16)


def stage(steps: int) -> StageConfig:
    return StageConfig(steps=steps, volumes_per_step=2, seed=3, log_every=1, projector_width=16)


def assert_same_state(first: torch.nn.Module, second: torch.nn.Module) -> None:
    first_state, second_state = first.state_dict(), second.state_dict()
    assert first_state.keys() == second_state.keys()
    for key in first_state:
        torch.testing.assert_close(first_state[key], second_state[key], rtol=0, atol=0, msg=key)


def test_embedding_resume_matches_uninterrupted(small_training_volumes, tmp_path):
    whole = train_embedding_net(NET, small_training_volumes, VIEWS, stage(6), -1.0)

    path = tmp_path / "descriptor_checkpoint.pt"
    log = tmp_path / "log.csv"
    train_embedding_net(NET, small_training_volumes, VIEWS, stage(6), -1.0, log,
                        checkpoint=CheckpointConfig(path=path, stop_after=3))
    resumed = train_embedding_net(NET, small_training_volumes, VIEWS, stage(6), -1.0, log,
                                  checkpoint=CheckpointConfig(path=path, resume=True))

    assert_same_state(whole, resumed)
    with open(log, newline="", encoding="utf-8") as handle:
        assert [int(row["step"]) for row in csv.DictReader(handle)] == list(range(6))


def test_embedding_seed_changes_parameters(small_training_volumes, tmp_path):
    """Guards the check above: a different seed gives different parameters, so equality is meaningful."""
    first = train_embedding_net(NET, small_training_volumes, VIEWS, stage(2), -1.0)
    other = stage(2)
    other.seed = 4
    second = train_embedding_net(NET, small_training_volumes, VIEWS, other, -1.0)

    assert not torch.equal(first.head.weight, second.head.weight)


def test_density_resume_matches_uninterrupted(small_training_volumes, coarse_grid, tmp_path):
    config = ModelConfig(preprocessing=coarse_grid, descriptor=NET, condition=ConditionConfig(kind="sincos",
                         frequencies=2), density=DensityConfig(kind="flow", hidden_channels=8, flow_steps=2))

    def fresh_model() -> ScreenerModel:
        torch.manual_seed(0)
        return ScreenerModel(config)

    whole = fresh_model()
    train_density(whole, small_training_volumes, 8, stage(5), -1.0)

    path = tmp_path / "density_checkpoint.pt"
    resumed = fresh_model()
    train_density(resumed, small_training_volumes, 8, stage(5), -1.0,
                  checkpoint=CheckpointConfig(path=path, stop_after=2))
    resumed = fresh_model()
    train_density(resumed, small_training_volumes, 8, stage(5), -1.0,
                  checkpoint=CheckpointConfig(path=path, resume=True))

    assert bool(whole.density.layers[0].initialized)
    assert_same_state(whole.density, resumed.density)
