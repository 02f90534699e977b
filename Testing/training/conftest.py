"""Fixtures for training tests: two small real CTs from the training collection, on a coarse grid."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ScreenerCore.config import PreprocessingConfig

SHARED_CT = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "ct"
# The two smallest training CTs (abdomen-pelvis at 3 mm, a mediastinum crop at 1.5 mm).
SMALL_TRAINING_CTS = ("train/abdomen_pelvis_totalseg.nii.gz", "train/chest_cta_mediastinum_crop.nii.gz")
# 6 mm voxels keep each volume near 60 x 50 x 60 voxels, so a training step takes well under a second.
COARSE_GRID = PreprocessingConfig(spacing_mm=(6.0, 6.0, 6.0), patch_size=(32, 32, 32))


@pytest.fixture(scope="session")
def small_ct_files() -> list[Path]:
    """Paths of the two small CTs; skips outside CI when the shared data is absent, fails in CI."""
    paths = [SHARED_CT / name for name in SMALL_TRAINING_CTS]
    missing = [str(path) for path in paths if not path.is_file()]
    if missing:
        message = f"real CT data not found: {', '.join(missing)}"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return paths


@pytest.fixture(scope="session")
def small_training_volumes(small_ct_files, tmp_path_factory):
    from screener_training.data import load_training_volumes  # noqa: PLC0415

    return load_training_volumes(small_ct_files, COARSE_GRID, tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="session")
def coarse_grid() -> PreprocessingConfig:
    return COARSE_GRID
