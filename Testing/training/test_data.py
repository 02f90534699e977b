"""Training inputs: listing, sharding over ranks, caching, skipping unreadable files, padding small volumes."""

from __future__ import annotations

import logging

import numpy as np

from screener_training.data import list_ct_sources, load_training_volumes
from screener_training.density_training import sample_plain_crop
from screener_training.distributed import shard


def test_shard_splits_round_robin():
    items = list(range(7))

    assert shard(items, 0, 2) == [0, 2, 4, 6]
    assert shard(items, 1, 2) == [1, 3, 5]
    assert shard(items[:1], 1, 3) == [0]


def test_csv_list_resolves_relative_paths(small_ct_files, tmp_path):
    listing = tmp_path / "list.csv"
    (tmp_path / "link.nii.gz").symlink_to(small_ct_files[0])
    listing.write_text(f"path\nlink.nii.gz\n{small_ct_files[1]}\n", encoding="utf-8")

    assert list_ct_sources([listing]) == [tmp_path / "link.nii.gz", small_ct_files[1]]


def test_unreadable_file_is_skipped_and_counted(small_ct_files, coarse_grid, tmp_path, caplog):
    broken = tmp_path / "broken.nii.gz"
    broken.write_bytes(b"not a NIfTI file")

    with caplog.at_level(logging.INFO, logger="screener_training.data"):
        volumes = load_training_volumes([small_ct_files[0], broken], coarse_grid, tmp_path / "cache")

    assert [volume.name for volume in volumes] == [small_ct_files[0].name]
    assert any("Skipping training input" in message and "broken.nii.gz" in message for message in caplog.messages)
    assert any("skipped 1 unreadable" in message for message in caplog.messages)


def test_cache_returns_same_arrays(small_ct_files, coarse_grid, tmp_path):
    first = load_training_volumes(small_ct_files[:1], coarse_grid, tmp_path / "cache")[0]
    cached_files = list((tmp_path / "cache").glob("*.npz"))
    second = load_training_volumes(small_ct_files[:1], coarse_grid, tmp_path / "cache")[0]

    assert len(cached_files) == 1
    np.testing.assert_array_equal(first.intensity, second.intensity)
    np.testing.assert_array_equal(first.body_mask, second.body_mask)
    assert first.origin_mm == second.origin_mm


def test_crop_larger_than_volume_is_padded(small_training_volumes):
    volume = small_training_volumes[0]
    # Twice the longest edge: the crop covers the volume wherever its centre falls.
    size = 2 * max(volume.intensity.shape) + 2

    crop, mask, _ = sample_plain_crop(volume, size, np.random.default_rng(0), pad_value=-1.0)

    assert crop.shape == (1, size, size, size)
    assert int(mask.sum()) == int(volume.body_mask.sum())
    assert float(crop.min()) == -1.0
