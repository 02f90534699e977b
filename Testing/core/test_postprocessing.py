"""Score smoothing on the model grid."""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from ScreenerCore import compute_anomaly_map, load_model_package, read_ct
from ScreenerCore.config import CalibrationConfig
from ScreenerCore.postprocessing import smooth_scores


def test_zero_sigma_returns_input():
    scores = np.random.default_rng(0).random((5, 6, 7)).astype(np.float32)
    assert smooth_scores(scores, (2.0, 2.0, 2.0), 0.0) is scores


def test_spike_spreads_and_keeps_mass():
    scores = np.zeros((21, 21, 21), np.float32)
    scores[10, 10, 10] = 1.0
    smoothed = smooth_scores(scores, (2.0, 2.0, 2.0), 2.0)
    assert smoothed[10, 10, 10] < 0.1
    assert smoothed[10, 10, 11] > 0.0
    assert np.isclose(smoothed.sum(), 1.0, atol=1e-4)


def test_sigma_is_in_mm_per_axis():
    scores = np.zeros((21, 21, 21), np.float32)
    scores[10, 10, 10] = 1.0
    # 4 mm voxels along z, 1 mm in-plane: the same sigma in mm spreads fewer voxels along z.
    smoothed = smooth_scores(scores, (4.0, 1.0, 1.0), 2.0)
    assert smoothed[11, 10, 10] < smoothed[10, 11, 10]


def test_pipeline_smoothing_keeps_floor_outside_body(shared_ct, tiny_model_folder):
    image = read_ct(shared_ct("train/abdomen_pelvis_totalseg.nii.gz"))
    loaded = load_model_package(tiny_model_folder)
    # Without calibration the floor is the lowest in-body score, so the untrained model's map varies in the body.
    loaded.config.calibration = CalibrationConfig()
    raw = compute_anomaly_map(image, loaded)
    loaded.config.preprocessing.score_smoothing_mm = 8.0
    smoothed = compute_anomaly_map(image, loaded)

    body = raw.model_grid.body_mask
    assert np.all(smoothed.model_grid_map[~body] == smoothed.floor)
    assert not np.allclose(smoothed.model_grid_map[body], raw.model_grid_map[body])
    # Smoothing lowers the spread of in-body scores.
    assert smoothed.model_grid_map[body].std() < raw.model_grid_map[body].std()
    assert sitk.GetArrayViewFromImage(smoothed.anomaly_map).shape == sitk.GetArrayViewFromImage(image).shape
