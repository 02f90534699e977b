"""Volume packs: preprocessed training volumes in one file, read back in place of the CTs."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from ScreenerCore.errors import InputError
from screener_training.cli import main as train_main
from screener_training.data import load_training_volumes
from screener_training.packs import is_volume_pack, write_volume_pack

# float16 keeps 11 significant bits: a step of at most 2 ** -11 for intensities in [-1, 1].
FLOAT16_STEP = 2.0 ** -11


@pytest.fixture(scope="module")
def pack_and_volumes(small_ct_files, coarse_grid, tmp_path_factory):
    folder = tmp_path_factory.mktemp("pack")
    volumes = load_training_volumes(small_ct_files, coarse_grid, folder / "cache")
    return write_volume_pack(volumes, coarse_grid, folder / "train.npz"), volumes


def test_pack_round_trip(pack_and_volumes, coarse_grid):
    pack, volumes = pack_and_volumes

    loaded = load_training_volumes([pack], coarse_grid)

    assert [volume.name for volume in loaded] == [volume.name for volume in volumes]
    for original, copy in zip(volumes, loaded):
        assert copy.intensity.dtype == np.float32
        np.testing.assert_allclose(copy.intensity, original.intensity, rtol=0, atol=FLOAT16_STEP)
        np.testing.assert_array_equal(copy.body_mask, original.body_mask)
        assert copy.origin_mm == pytest.approx(original.origin_mm)
        assert copy.spacing_mm == original.spacing_mm


def test_pack_for_other_grid_rejected(pack_and_volumes, coarse_grid):
    pack, _ = pack_and_volumes
    other = dataclasses.replace(coarse_grid, spacing_mm=(4.0, 4.0, 4.0))

    with pytest.raises(InputError, match="spacing_mm.*screener-train pack"):
        load_training_volumes([pack], other)


def test_pack_volumes_split_over_ranks(pack_and_volumes, coarse_grid):
    pack, volumes = pack_and_volumes

    shards = [[v.name for v in load_training_volumes([pack], coarse_grid, rank=rank, world_size=2)]
              for rank in range(2)]

    assert len(shards[0]) == 1
    assert len(shards[1]) == 1
    assert sorted(shards[0] + shards[1]) == sorted(volume.name for volume in volumes)


def test_other_files_are_not_packs(small_ct_files, tmp_path):
    plain = tmp_path / "arrays.npz"
    np.savez(plain, values=np.zeros(3))
    broken = tmp_path / "broken.npz"
    broken.write_bytes(b"not a zip file")

    assert not is_volume_pack(plain)
    assert not is_volume_pack(broken)
    assert not is_volume_pack(small_ct_files[0])


def test_pack_suffix_required(pack_and_volumes, coarse_grid, tmp_path):
    _, volumes = pack_and_volumes

    with pytest.raises(InputError, match="must end in .npz"):
        write_volume_pack(volumes, coarse_grid, tmp_path / "train.zip")


def test_cli_packs_then_trains_from_pack(small_ct_files, tmp_path):
    grid = ["--spacing", "6", "6", "6", "--crop-size", "8", "--channels", "4", "8", "--descriptor-dim", "4",
            "--positions", "16", "--volumes-per-step", "1", "--projector-width", "16", "--device", "cpu",
            "--threads", "1"]
    pack = tmp_path / "train.npz"

    train_main(["pack", "--data", *map(str, small_ct_files), "--work-dir", str(tmp_path / "pack_work"),
                "--output", str(pack), *grid])
    train_main(["descriptor", "--data", str(pack), "--work-dir", str(tmp_path / "train_work"),
                "--descriptor-steps", "2", "--log-every", "1", *grid])

    assert is_volume_pack(pack)
    assert (tmp_path / "train_work" / "descriptor.safetensors").is_file()
    assert len((tmp_path / "train_work" / "descriptor_log.csv").read_text().splitlines()) == 1 + 2


def test_corrupt_pack_rejected(pack_and_volumes, coarse_grid, tmp_path):
    pack, _ = pack_and_volumes
    corrupt = tmp_path / "corrupt.npz"
    corrupt.write_bytes(pack.read_bytes()[:1000])

    with pytest.raises(InputError, match="not a readable volume pack"):
        load_training_volumes([corrupt], coarse_grid)


def test_pack_found_in_folder(pack_and_volumes, coarse_grid):
    pack, volumes = pack_and_volumes

    loaded = load_training_volumes([pack.parent], coarse_grid)

    assert sorted(volume.name for volume in loaded) == sorted(volume.name for volume in volumes)


def test_cli_reports_grid_mismatch_without_traceback(pack_and_volumes, tmp_path, caplog):
    pack, _ = pack_and_volumes

    code = train_main(["descriptor", "--data", str(pack), "--work-dir", str(tmp_path), "--spacing", "5", "5", "5",
                       "--descriptor-steps", "1", "--device", "cpu", "--threads", "1"])

    assert code == 1
    assert "spacing_mm is [6.0, 6.0, 6.0] in the pack but [5.0, 5.0, 5.0] here" in caplog.text
    assert "Traceback" not in caplog.text


def test_cli_checks_pack_suffix_first(tmp_path, caplog):
    # The data path does not exist: the suffix error must come before any attempt to read it.
    code = train_main(["pack", "--data", str(tmp_path / "missing"), "--work-dir", str(tmp_path),
                       "--output", str(tmp_path / "train.zip")])

    assert code == 1
    assert "must end in .npz" in caplog.text
