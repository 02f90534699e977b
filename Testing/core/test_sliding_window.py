"""Sliding-window coverage and blending."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from ScreenerCore.errors import OperationCancelled
from ScreenerCore.sliding_window import patch_starts, sliding_window_scores

PATCH = (8, 8, 8)


@pytest.mark.parametrize("shape", [(5, 6, 7), (8, 8, 8), (13, 21, 8), (17, 9, 30), (1, 8, 3)])
def test_every_voxel_covered(shape):
    covered = np.zeros(shape, dtype=int)

    def count_cover(patches, starts):
        for (z, y, x) in starts.tolist():
            covered[z:z + 8, y:y + 8, x:x + 8] += 1
        return torch.zeros(patches.shape[0], *PATCH)

    result = sliding_window_scores(np.zeros(shape, np.float32), count_cover, PATCH, overlap=0.25, batch_size=3)
    assert result.shape == shape
    assert covered.min() >= 1


@pytest.mark.parametrize("shape", [(5, 6, 7), (8, 8, 8), (19, 11, 26)])
def test_constant_predictor_stays_constant(shape):
    result = sliding_window_scores(np.random.rand(*shape).astype(np.float32),
                                   lambda patches, starts: torch.full((patches.shape[0], *PATCH), 3.25),
                                   PATCH, overlap=0.5, batch_size=2)
    assert np.allclose(result, 3.25)


def test_overlaps_are_averaged():
    # Each patch returns its own start x; a voxel covered by starts 0 and 4 gets their mean.
    def start_x(patches, starts):
        return starts[:, 2].float().view(-1, 1, 1, 1).expand(-1, *PATCH).clone()

    result = sliding_window_scores(np.zeros((8, 8, 12), np.float32), start_x, PATCH, overlap=0.5, batch_size=4)
    assert patch_starts(12, 8, 0.5) == [0, 4]
    assert np.allclose(result[:, :, :4], 0.0)
    assert np.allclose(result[:, :, 4:8], 2.0)
    assert np.allclose(result[:, :, 8:], 4.0)


def test_identity_predictor_returns_volume():
    volume = np.random.rand(10, 13, 17).astype(np.float32)
    result = sliding_window_scores(volume, lambda patches, starts: patches[:, 0], PATCH, overlap=0.25)
    assert np.allclose(result, volume, atol=1e-6)


def test_padding_uses_pad_value():
    seen = []
    sliding_window_scores(np.ones((3, 8, 8), np.float32), lambda p, s: seen.append(p.clone()) or p[:, 0], PATCH,
                          pad_value=-7.0)
    assert torch.all(seen[0][0, 0, 3:] == -7.0)
    assert torch.all(seen[0][0, 0, :3] == 1.0)


def test_cancel_stops_before_next_batch():
    cancel = threading.Event()
    calls = []

    def predictor(patches, starts):
        calls.append(1)
        cancel.set()
        return patches[:, 0]

    with pytest.raises(OperationCancelled):
        sliding_window_scores(np.zeros((20, 20, 20), np.float32), predictor, PATCH, batch_size=1, cancel=cancel)
    assert len(calls) == 1


def test_progress_reaches_total():
    reports = []
    sliding_window_scores(np.zeros((12, 12, 12), np.float32), lambda p, s: p[:, 0], PATCH, batch_size=3,
                          progress=lambda done, total: reports.append((done, total)))
    assert reports[-1][0] == reports[-1][1] == 8
    assert [done for done, _ in reports] == sorted(done for done, _ in reports)
