"""Shared fixtures: the real CT data beside the checkout and small model packages."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from screener_testdata import EXAMPLE_CT, REPO_ROOT, SHARED_CT, shared_ct_path, tiny_model_config  # noqa: F401 - re-exported

# Two threads match the CI machine; more only adds contention.
torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture
def shared_ct():
    return shared_ct_path


@pytest.fixture(scope="session")
def tiny_model_folder(tmp_path_factory) -> Path:
    """A randomly initialised, calibrated model package with small nets and 32-voxel patches."""
    from ScreenerCore.calibration import Calibration
    from ScreenerCore.models import ScreenerModel
    from ScreenerCore.package import save_model_package

    torch.manual_seed(0)
    config = tiny_model_config()
    model = ScreenerModel(config).eval()
    config.calibration = Calibration.from_scores(torch.randn(10000).numpy() * 2 + 20).to_config()
    return save_model_package(model, tmp_path_factory.mktemp("tiny_model"))
