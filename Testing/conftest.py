"""Shared fixtures: the real CT data beside the checkout and small model packages."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from screener_testdata import EXAMPLE_CT, REPO_ROOT, SHARED_CT, shared_ct_path  # noqa: F401 - re-exported

# Two threads match the CI machine; more only adds contention.
torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture
def shared_ct():
    return shared_ct_path


@pytest.fixture(scope="session")
def tiny_model_folder(tmp_path_factory) -> Path:
    """A randomly initialised, calibrated model package with small nets and 32-voxel patches."""
    from ScreenerCore.calibration import Calibration
    from ScreenerCore.config import ConditionConfig, ModelConfig, NetConfig, PreprocessingConfig
    from ScreenerCore.models import ScreenerModel
    from ScreenerCore.package import save_model_package

    torch.manual_seed(0)
    config = ModelConfig(
        name="tiny-test-model",
        preprocessing=PreprocessingConfig(spacing_mm=(4.0, 4.0, 4.0), patch_size=(32, 32, 32), overlap=0.25),
        descriptor=NetConfig(in_channels=1, out_channels=8, channels=(4, 8)),
        condition=ConditionConfig(kind="masked", net=NetConfig(in_channels=2, out_channels=8, channels=(4, 8))),
    )
    config.density.hidden_channels = 8
    model = ScreenerModel(config).eval()
    config.calibration = Calibration.from_scores(torch.randn(10000).numpy() * 2 + 20).to_config()
    return save_model_package(model, tmp_path_factory.mktemp("tiny_model"))
