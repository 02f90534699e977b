"""Paths to the test data: the real CT collection beside the checkout and the shipped example.

Test modules import these names from here rather than from a conftest.py, because
pytest loads every conftest.py under the module name "conftest" and a test folder
with its own conftest.py would shadow the top-level one.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
# The real CT collection lies beside the checkout, in ../shared/data/ct (see its README for sources).
SHARED_CT = REPO_ROOT.parent / "shared" / "data" / "ct"
EXAMPLE_CT = REPO_ROOT / "examples" / "lung2_example.nii.gz"


def shared_ct_path(relative: str) -> Path:
    """Return a path under the shared CT folder; skip the test when it is absent outside CI, fail in CI."""
    path = SHARED_CT / relative
    if not path.exists():
        message = f"real CT data not found at {path}"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path


def tiny_model_config(name: str = "tiny-test-model"):
    """Return the config of the tests' tiny model: 4 mm grid, 32-voxel patches, nets of widths 4 and 8.

    Small enough that a randomly initialised model scores a CT crop in well under a second.
    """
    from ScreenerCore.config import ConditionConfig, ModelConfig, NetConfig, PreprocessingConfig  # noqa: PLC0415

    config = ModelConfig(
        name=name,
        preprocessing=PreprocessingConfig(spacing_mm=(4.0, 4.0, 4.0), patch_size=(32, 32, 32), overlap=0.25),
        descriptor=NetConfig(in_channels=1, out_channels=8, channels=(4, 8)),
        condition=ConditionConfig(kind="masked", net=NetConfig(in_channels=2, out_channels=8, channels=(4, 8))),
    )
    config.density.hidden_channels = 8
    return config
