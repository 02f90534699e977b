"""`screener predict` over many scans: folder and CSV inputs, prefetching, resume, torchrun shards."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import SimpleITK as sitk

from screener_testdata import shared_ct_path
from ScreenerCore.batch import (BatchItem, is_batch_input, is_complete, plan_batch, read_input_list, run_items,
                                scan_stem, shard)
from ScreenerCore.cli import main
from ScreenerCore.errors import InputError
from ScreenerCore.io import read_ct, same_geometry

CT_FILE = "train/abdomen_pelvis_totalseg.nii.gz"


@pytest.fixture(scope="module")
def scan_folder(tmp_path_factory) -> Path:
    """Three small crops of a real CT, as .nii.gz and .nrrd files, and a file that is not an image."""
    image = read_ct(shared_ct_path(CT_FILE))
    folder = tmp_path_factory.mktemp("scans")
    sitk.WriteImage(image[:40, :40, :30], str(folder / "crop_a.nii.gz"))
    sitk.WriteImage(image[40:80, 30:70, 40:70], str(folder / "crop_b.nrrd"))
    sitk.WriteImage(image[60:, 50:, 70:], str(folder / "crop_c.nii.gz"))
    (folder / "notes.txt").write_text("not a scan\n")
    return folder


def predict(*arguments: str) -> int:
    return main(["predict", *arguments, "--device", "cpu", "--progress", "none"])


def test_batch_input_detection(scan_folder, tmp_path):
    dicom_like = tmp_path / "dicom"
    dicom_like.mkdir()
    (dicom_like / "IM0001").write_bytes(b"\0" * 200)
    (tmp_path / "list.csv").write_text("input\na.nii.gz\n")

    assert is_batch_input(scan_folder)
    assert is_batch_input(tmp_path / "list.csv")
    assert not is_batch_input(dicom_like)
    assert not is_batch_input(scan_folder / "crop_a.nii.gz")


def test_plan_from_folder(scan_folder, tmp_path):
    items = plan_batch(scan_folder, tmp_path / "out", findings_dir=tmp_path / "findings")
    assert [item.input.name for item in items] == ["crop_a.nii.gz", "crop_b.nrrd", "crop_c.nii.gz"]
    assert [item.output.name for item in items] == ["crop_a.nii.gz", "crop_b.nii.gz", "crop_c.nii.gz"]
    assert all(item.output.parent == tmp_path / "out" for item in items)
    assert items[1].findings == tmp_path / "findings" / "crop_b.csv"
    assert items[1].preview is None


def test_plan_from_csv_with_header(scan_folder, tmp_path):
    listing = tmp_path / "list.csv"
    listing.write_text(f"subject,input,output\n1,{scan_folder / 'crop_b.nrrd'},b_map.nrrd\n"
                       f"2,{scan_folder / 'crop_a.nii.gz'},\n")
    items = plan_batch(listing, tmp_path / "out")
    assert [item.input.name for item in items] == ["crop_a.nii.gz", "crop_b.nrrd"]
    assert items[0].output == tmp_path / "out" / "crop_a.nii.gz"
    assert items[1].output == tmp_path / "out" / "b_map.nrrd"


def test_csv_without_header_is_relative_to_csv(tmp_path):
    listing = tmp_path / "lists" / "scans.csv"
    listing.parent.mkdir()
    listing.write_text("../ct/one.nii.gz\n\n/abs/two.mha\n")
    entries = read_input_list(listing)
    assert entries == [(listing.parent / "../ct/one.nii.gz", None), (Path("/abs/two.mha"), None)]


def test_empty_csv_raises(tmp_path):
    listing = tmp_path / "empty.csv"
    listing.write_text("\n")
    with pytest.raises(InputError, match="has no rows"):
        plan_batch(listing, tmp_path / "out")


def test_colliding_outputs_raise(tmp_path):
    listing = tmp_path / "list.csv"
    listing.write_text("input\nsite1/scan.nii.gz\nsite2/scan.nrrd\n")
    with pytest.raises(InputError, match="would both write"):
        plan_batch(listing, tmp_path / "out")


def test_scan_stem_strips_double_suffix():
    assert scan_stem(Path("chest.nii.gz")) == "chest"
    assert scan_stem(Path("a.b.nrrd")) == "a.b"


@pytest.mark.parametrize("world_size", [1, 2, 3, 5])
def test_shards_partition_the_list(world_size):
    items = [BatchItem(Path(f"{index}.nii"), Path(f"out/{index}.nii")) for index in range(7)]
    shards = [shard(items, rank, world_size) for rank in range(world_size)]
    flat = [item for part in shards for item in part]
    assert sorted(item.input.name for item in flat) == sorted(item.input.name for item in items)
    assert len(flat) == len(items)
    assert max(map(len, shards)) - min(map(len, shards)) <= 1


def test_next_scan_read_while_scoring(tmp_path):
    items = [BatchItem(Path(f"scan{index}.nii"), tmp_path / f"map{index}.nii") for index in range(3)]
    second_read = threading.Event()
    overlapped = []

    def read(path):
        if path.name == "scan1.nii":
            second_read.set()
        return path.name

    def score(item, image):
        if item.input.name == "scan0.nii":
            # The reader thread must fetch scan 1 while scan 0 is still being scored.
            overlapped.append(second_read.wait(timeout=30))

    status = run_items(items, score, read=read)
    assert overlapped == [True]
    assert status["done"] == [item.input for item in items]


def test_failed_scan_does_not_stop_batch(tmp_path):
    items = [BatchItem(Path(f"scan{index}.nii"), tmp_path / f"map{index}.nii") for index in range(3)]

    def read(path):
        if path.name == "scan1.nii":
            raise InputError(f"'{path}' cannot be read")
        return path.name

    scored = []
    status = run_items(items, lambda item, image: scored.append(image), read=read)
    assert scored == ["scan0.nii", "scan2.nii"]
    assert status["failed"] == [Path("scan1.nii")]


def test_truncated_map_is_not_complete(tmp_path, scan_folder):
    item = BatchItem(scan_folder / "crop_a.nii.gz", tmp_path / "map.nrrd")
    assert not is_complete(item)
    sitk.WriteImage(read_ct(scan_folder / "crop_a.nii.gz"), str(item.output))
    assert is_complete(item)
    item.output.write_bytes(b"NRRD0004\ntype: float\n")
    assert not is_complete(item)


def test_predict_folder_then_resume(scan_folder, tmp_path, tiny_model_folder):
    out = tmp_path / "maps"
    assert predict(str(scan_folder), "-o", str(out), "--model", str(tiny_model_folder),
                   "--findings", str(tmp_path / "findings")) == 0

    maps = sorted(path.name for path in out.iterdir())
    assert maps == ["crop_a.nii.gz", "crop_b.nii.gz", "crop_c.nii.gz"]
    for name, source in [("crop_a.nii.gz", "crop_a.nii.gz"), ("crop_b.nii.gz", "crop_b.nrrd")]:
        assert same_geometry(sitk.ReadImage(str(out / name)), sitk.ReadImage(str(scan_folder / source)), 1e-4)
    assert sorted(path.name for path in (tmp_path / "findings").iterdir()) == ["crop_a.csv", "crop_b.csv",
                                                                              "crop_c.csv"]

    # A rerun after an interruption rewrites only the scan whose map is missing.
    times = {name: (out / name).stat().st_mtime_ns for name in maps}
    (out / "crop_b.nii.gz").unlink()
    assert predict(str(scan_folder), "-o", str(out), "--model", str(tiny_model_folder),
                   "--findings", str(tmp_path / "findings")) == 0
    assert (out / "crop_b.nii.gz").is_file()
    assert (out / "crop_a.nii.gz").stat().st_mtime_ns == times["crop_a.nii.gz"]
    assert (out / "crop_c.nii.gz").stat().st_mtime_ns == times["crop_c.nii.gz"]


def test_predict_shard_of_torchrun_rank(scan_folder, tmp_path, tiny_model_folder, monkeypatch):
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    out = tmp_path / "maps"
    assert predict(str(scan_folder), "-o", str(out), "--model", str(tiny_model_folder)) == 0
    assert sorted(path.name for path in out.iterdir()) == ["crop_b.nii.gz"]


def test_predict_batch_rejects_map_file_as_output(scan_folder, tmp_path, tiny_model_folder):
    assert predict(str(scan_folder), "-o", str(tmp_path / "map.nii.gz"), "--model", str(tiny_model_folder)) == 2
    assert not (tmp_path / "map.nii.gz").exists()
