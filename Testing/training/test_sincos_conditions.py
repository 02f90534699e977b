"""Sin-cos conditions encode each voxel's position in the whole CT, in mm, in training and at inference."""

from __future__ import annotations

import numpy as np
import torch

from ScreenerCore.config import ConditionConfig, ModelConfig, NetConfig
from ScreenerCore.io import read_ct
from ScreenerCore.models import ScreenerModel
from ScreenerCore.models.positional import patch_positions_mm, sincos_encoding
from ScreenerCore.preprocessing import to_model_grid
from screener_training.density_training import crop_origin_mm, sample_plain_crop
from screener_training.views import ViewConfig, sample_positive_pair


def sincos_model(grid) -> ScreenerModel:
    config = ModelConfig(preprocessing=grid, descriptor=NetConfig(out_channels=4, channels=(4, 8)),
                         condition=ConditionConfig(kind="sincos", frequencies=4, max_wavelength_mm=500.0))
    return ScreenerModel(config).eval()


def test_crop_conditions_equal_whole_ct_conditions(small_training_volumes, coarse_grid):
    model = sincos_model(coarse_grid)
    volume = small_training_volumes[0]
    whole_intensity = torch.from_numpy(volume.intensity)[None, None]
    whole = model.conditions(whole_intensity, torch.tensor([volume.origin_mm], dtype=torch.float32))
    rng = np.random.default_rng(0)

    for _ in range(5):
        crop, _, start = sample_plain_crop(volume, 16, rng, pad_value=-1.0)
        conditions = model.conditions(crop[None], crop_origin_mm(volume, start)[None])[0]
        # Compare the voxels of the crop that lie inside the volume.
        low = np.maximum(start, 0)
        high = np.minimum(start + 16, volume.intensity.shape)
        inside_crop = tuple(slice(a - s, b - s) for a, b, s in zip(low, high, start))
        inside_whole = tuple(slice(a, b) for a, b in zip(low, high))
        torch.testing.assert_close(conditions[(slice(None), *inside_crop)], whole[0][(slice(None), *inside_whole)],
                                   atol=2e-4, rtol=0)


def test_training_origin_is_inference_grid_origin(small_training_volumes, small_ct_files, coarse_grid):
    grid = to_model_grid(read_ct(small_ct_files[0]), coarse_grid)

    np.testing.assert_allclose(small_training_volumes[0].origin_mm, grid.reference.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(small_training_volumes[0].spacing_mm, grid.reference.GetSpacing())


def test_positive_pair_points_agree_in_mm(small_training_volumes):
    """The same anatomical point has the same position in mm in both resampled views."""
    volume = small_training_volumes[1]
    rng = np.random.default_rng(1)
    pair = sample_positive_pair(volume, ViewConfig(crop_size=16, positions_per_pair=64), rng, pad_value=-1.0)

    millimetres = [pair.origin_mm[v] + pair.positions[v].flip(-1).float() * pair.spacing_mm[v] for v in range(2)]
    # Positions are rounded to each view's voxel grid: at most half a voxel off in each view.
    tolerance = 0.5 * (pair.spacing_mm[0] + pair.spacing_mm[1]) + 1e-4
    assert bool(torch.all((millimetres[0] - millimetres[1]).abs() <= tolerance))
    assert not torch.allclose(pair.spacing_mm[0], pair.spacing_mm[1])


def test_view_sincos_uses_view_spacing(small_training_volumes):
    """Encoding a resampled view with its own origin and spacing gives the encoding of each voxel's mm position."""
    volume = small_training_volumes[0]
    pair = sample_positive_pair(volume, ViewConfig(crop_size=8, positions_per_pair=16), np.random.default_rng(2),
                                pad_value=-1.0)
    positions = patch_positions_mm(pair.origin_mm[:1], pair.spacing_mm[0], (8, 8, 8))
    encoded = sincos_encoding(positions, 4, 500.0)[0]

    for z, y, x in pair.positions[0][:5].tolist():
        point = pair.origin_mm[0] + torch.tensor([x, y, z], dtype=torch.float32) * pair.spacing_mm[0]
        expected = sincos_encoding(point.view(1, 3, 1, 1, 1), 4, 500.0).view(-1)
        torch.testing.assert_close(encoded[:, z, y, x], expected, atol=2e-4, rtol=0)
