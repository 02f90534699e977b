"""Input geometry: any voxel-axis order and orientation, rounded direction cosines, volumes thinner than a patch."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from scipy.spatial.transform import Rotation

from ScreenerCore.errors import InputError
from ScreenerCore.io import read_ct, same_geometry, write_image
from ScreenerCore.pipeline import compute_anomaly_map
from ScreenerCore.sliding_window import sliding_window_scores

from ct_inputs import abdomen_crop, screening_model  # noqa: F401  (pytest fixtures)

# Orientation codes as DICOMOrient reads them: the patient direction each voxel axis (i, j, k) points to.
ORIENTATIONS = ["LPS", "RAS", "PIR", "ILA", "SAR"]


def on_grid_of(image: sitk.Image, reference: sitk.Image) -> np.ndarray:
    """Return `image` resampled onto `reference`'s grid by nearest neighbour, as a (z, y, x) array.

    Both grids contain the same voxel centres in these tests, so nearest neighbour copies
    values without interpolating.
    """
    resampled = sitk.Resample(image, reference, sitk.Transform(), sitk.sitkNearestNeighbor, np.nan, sitk.sitkFloat32)
    return sitk.GetArrayFromImage(resampled)


@pytest.mark.parametrize("orientation", ORIENTATIONS)
def test_reoriented_scan_gives_same_map(orientation, abdomen_crop, screening_model):
    reoriented = sitk.DICOMOrient(abdomen_crop, orientation)
    # The reoriented image is the same physical scan: every voxel centre and value recurs.
    assert np.array_equal(on_grid_of(reoriented, abdomen_crop), sitk.GetArrayFromImage(abdomen_crop))

    reference_map = compute_anomaly_map(abdomen_crop, screening_model, device="cpu").anomaly_map
    reoriented_map = compute_anomaly_map(reoriented, screening_model, device="cpu").anomaly_map

    reference = sitk.GetArrayFromImage(reference_map)
    compared = on_grid_of(reoriented_map, abdomen_crop)
    # The model grid is identity-direction and covers the same physical box for every voxel
    # order, so the maps agree to float32 round-off (measured: exactly equal on this crop).
    spread = float(reference.max() - reference.min())
    assert spread > 0
    assert np.abs(compared - reference).max() <= 1e-5 * spread


@pytest.mark.parametrize("orientation", ORIENTATIONS)
def test_map_keeps_input_orientation(orientation, abdomen_crop, screening_model, tmp_path):
    image = sitk.DICOMOrient(abdomen_crop, orientation)
    result = compute_anomaly_map(image, screening_model, device="cpu")
    assert result.anomaly_map.GetSize() == image.GetSize()
    assert result.anomaly_map.GetOrigin() == image.GetOrigin()
    assert result.anomaly_map.GetSpacing() == image.GetSpacing()
    assert result.anomaly_map.GetDirection() == image.GetDirection()

    reread = sitk.ReadImage(str(write_image(result.anomaly_map, tmp_path / f"map_{orientation}.nrrd")))
    assert same_geometry(reread, image, tolerance=1e-6)


def oblique_direction(float32: bool) -> np.ndarray:
    rotation = Rotation.from_euler("xyz", [12.0, -7.0, 23.0], degrees=True).as_matrix()
    return rotation.astype(np.float32).astype(np.float64) if float32 else rotation


@pytest.mark.parametrize("suffix", [".mha", ".nrrd"])
def test_float32_direction_read_with_warning(suffix, abdomen_crop, screening_model, tmp_path, caplog):
    rounded = sitk.Image(abdomen_crop)
    rounded.SetDirection(oblique_direction(float32=True).ravel().tolist())
    exact = sitk.Image(abdomen_crop)
    exact.SetDirection(oblique_direction(float32=False).ravel().tolist())
    path = tmp_path / f"oblique{suffix}"
    sitk.WriteImage(rounded, str(path))

    image = read_ct(path)
    direction = np.array(image.GetDirection()).reshape(3, 3)
    deviation = np.abs(direction @ direction.T - np.eye(3)).max()
    assert 1e-9 < deviation < 1e-6, "the file should keep float32-rounded cosines"

    with caplog.at_level(logging.WARNING, logger="ScreenerCore"):
        result = compute_anomaly_map(image, screening_model, device="cpu", name=str(path))
    warnings = [r.getMessage() for r in caplog.records if "orthonormal" in r.getMessage()]
    assert len(warnings) == 1
    assert str(path) in warnings[0]
    assert same_geometry(result.anomaly_map, image, tolerance=0)

    # Rounding moves voxel positions by about 1e-7 x 200 mm, so the map matches the exact rotation's.
    exact_map = sitk.GetArrayFromImage(compute_anomaly_map(exact, screening_model, device="cpu").anomaly_map)
    rounded_map = sitk.GetArrayFromImage(result.anomaly_map)
    assert np.abs(rounded_map - exact_map).max() < 1e-3 * float(exact_map.max() - exact_map.min())


def test_singular_direction_rejected(tmp_path):
    # ITK refuses a singular direction in memory, but reads one from a MetaImage header.
    path = tmp_path / "flat.mha"
    sitk.WriteImage(sitk.GetImageFromArray(np.full((4, 5, 6), -1000, np.int16)), str(path))
    header = path.read_bytes()
    assert b"TransformMatrix = 1 0 0 0 1 0 0 0 1" in header
    path.write_bytes(header.replace(b"TransformMatrix = 1 0 0 0 1 0 0 0 1", b"TransformMatrix = 1 0 0 0 1 0 1 0 0"))

    with pytest.raises(InputError, match="invalid direction matrix") as error:
        read_ct(path)
    assert str(path) in str(error.value)


def resample_to(image: sitk.Image, size, spacing) -> sitk.Image:
    """Return `image` resampled onto an axis-aligned grid of `size` voxels and `spacing` mm, centred on it."""
    centre = np.array(image.TransformContinuousIndexToPhysicalPoint([(s - 1) / 2 for s in image.GetSize()]))
    reference = sitk.Image([int(s) for s in size], sitk.sitkFloat32)
    reference.SetSpacing([float(s) for s in spacing])
    reference.SetOrigin((centre - (np.array(size) - 1) / 2 * np.array(spacing)).tolist())
    return sitk.Resample(image, reference, sitk.Transform(), sitk.sitkLinear, -1024.0, sitk.sitkFloat32)


@pytest.mark.parametrize("size,spacing", [
    ((64, 64, 3), (0.7, 0.7, 5.0)),  # thinner than one 32-voxel patch of 4 mm along z
    ((64, 64, 1), (0.7, 0.7, 5.0)),  # a single slice
    ((64, 64, 1), (0.7, 0.7, 1.0)),  # a single slice thinner than one model voxel
    ((1, 40, 30), (2.0, 2.0, 2.0)),  # a single sagittal plane
])
def test_thin_volume_fully_covered(size, spacing, abdomen_crop, screening_model):
    image = resample_to(abdomen_crop, size, spacing)
    result = compute_anomaly_map(image, screening_model, device="cpu")
    scores = sitk.GetArrayFromImage(result.anomaly_map)
    assert result.anomaly_map.GetSize() == tuple(size)
    assert same_geometry(result.anomaly_map, image, tolerance=0)
    assert np.all(np.isfinite(scores))
    # Voxels in the body are scored, not only given the floor.
    assert scores.max() > result.floor


@pytest.mark.parametrize("shape,patch", [
    ((1, 20, 20), (8, 8, 8)),  # an axis of one voxel
    ((5, 20, 20), (1, 8, 8)),  # a window of one voxel along an axis
    ((3, 7, 9), (4, 8, 8)),  # every axis shorter than the patch
])
def test_sliding_window_covers_every_voxel(shape, patch):
    volume = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    calls = []

    def identity(patches: torch.Tensor, starts: torch.Tensor) -> torch.Tensor:
        calls.append(tuple(patches.shape))
        return patches[:, 0]

    blended = sliding_window_scores(volume, identity, patch, overlap=0.25, batch_size=2, pad_value=-5.0)
    assert blended.shape == shape
    assert np.all(np.isfinite(blended))
    # Each voxel is the mean of identical copies of itself, so any voxel left uncovered or
    # mixed with padding would differ from the input.
    np.testing.assert_allclose(blended, volume, rtol=0, atol=1e-6)
    assert all(call[2:] == patch for call in calls)
