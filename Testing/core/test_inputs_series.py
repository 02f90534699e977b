"""Input shape and series: 4D and vector images, DICOM folders with several series, per-slice rescale, paths."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import SimpleITK as sitk

from ScreenerCore.cli import main
from ScreenerCore.errors import InputError
from ScreenerCore.io import read_ct, same_geometry
from ScreenerCore.pipeline import compute_anomaly_map

from ct_inputs import abdomen_crop, new_uid, screening_model, write_dicom_series  # noqa: F401  (pytest fixtures)


def frames_of(crop: sitk.Image) -> list[np.ndarray]:
    """Return three different volumes: the crop and two shifted copies, as if from three time points."""
    hu = sitk.GetArrayFromImage(crop)
    return [hu, hu + 100.0, np.roll(hu, 5, axis=2)]


def test_4d_image_rejected_with_frame_count(abdomen_crop, tmp_path):
    path = tmp_path / "dynamic.nii.gz"
    four_d = sitk.JoinSeries([sitk.GetImageFromArray(frame) for frame in frames_of(abdomen_crop)])
    sitk.WriteImage(four_d, str(path))

    with pytest.raises(InputError) as error:
        read_ct(path)
    message = str(error.value)
    assert str(path) in message
    assert "3 frames" in message
    assert "--frame K" in message


@pytest.mark.parametrize("frame", [0, 1, 2])
def test_4d_frame_option_reads_one_frame(frame, abdomen_crop, tmp_path):
    path = tmp_path / "dynamic.nrrd"
    frames = frames_of(abdomen_crop)
    four_d = sitk.JoinSeries([sitk.GetImageFromArray(values) for values in frames])
    four_d.SetSpacing(abdomen_crop.GetSpacing() + (1.0,))
    four_d.SetOrigin(abdomen_crop.GetOrigin() + (0.0,))
    sitk.WriteImage(four_d, str(path))

    image = read_ct(path, frame=frame)
    assert image.GetDimension() == 3
    assert np.array_equal(sitk.GetArrayFromImage(image), frames[frame])
    assert np.allclose(image.GetSpacing(), abdomen_crop.GetSpacing())


def test_vector_image_rejected_not_averaged(abdomen_crop, tmp_path):
    path = tmp_path / "vector.nrrd"
    frames = frames_of(abdomen_crop)
    vector = sitk.Compose([sitk.GetImageFromArray(values) for values in frames])
    sitk.WriteImage(vector, str(path))

    with pytest.raises(InputError) as error:
        read_ct(path)
    assert "3 components per voxel" in str(error.value)
    assert "--frame K" in str(error.value)

    # A chosen component comes back exactly, neither averaged nor converted to luminance.
    assert np.array_equal(sitk.GetArrayFromImage(read_ct(path, frame=2)), frames[2])
    with pytest.raises(InputError, match="Frame 3 requested"):
        read_ct(path, frame=3)


def test_vector_image_rejected_by_pipeline(abdomen_crop, screening_model):
    # A front end that passes an image without read_ct (the Slicer module) meets the same check.
    vector = sitk.Compose([abdomen_crop, abdomen_crop])
    with pytest.raises(InputError, match="2 components per voxel"):
        compute_anomaly_map(vector, screening_model, device="cpu", name="vector volume")


def test_cli_frame_option(abdomen_crop, screening_model, tmp_path):
    path = tmp_path / "dynamic.nii.gz"
    frames = frames_of(abdomen_crop)
    four_d = sitk.JoinSeries([sitk.GetImageFromArray(values) for values in frames])
    sitk.WriteImage(four_d, str(path))
    output = tmp_path / "map.nii.gz"
    arguments = ["predict", str(path), "-o", str(output), "--model", str(screening_model.folder),
                 "--device", "cpu", "--progress", "none", "--threshold-score", "1e9"]

    assert main(arguments) == 2
    assert not output.exists()
    assert main(arguments + ["--frame", "1"]) == 0

    frame_one = sitk.GetImageFromArray(frames[1])
    expected = compute_anomaly_map(frame_one, screening_model, device="cpu").anomaly_map
    np.testing.assert_allclose(sitk.GetArrayFromImage(sitk.ReadImage(str(output))),
                               sitk.GetArrayFromImage(expected), rtol=0, atol=1e-6)


def small_hu(crop: sitk.Image, depth: int = 8) -> np.ndarray:
    """Return `depth` slices of the crop, 64 x 64 voxels, as integer HU from -1024 (unsigned DICOM's lowest)."""
    return np.maximum(np.round(sitk.GetArrayFromImage(crop)[20:20 + depth]), -1024).astype(np.float64)


def two_series_folder(folder, crop):
    """Write two interleaved series into one folder, plus files that are not DICOM."""
    first, second = new_uid(), new_uid()
    hu = small_hu(crop)
    write_dicom_series(folder, hu, series_uid=first, description="soft tissue", series_number=2, file_prefix="a")
    write_dicom_series(folder, hu + 100, series_uid=second, description="bone", series_number=3,
                       file_prefix="b", spacing=(0.8, 0.8, 1.25))
    (folder / "README.txt").write_text("exported by a test\n", encoding="utf-8")
    (folder / "thumbnail.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(64))
    (folder / "DICOMDIR.bak").write_bytes(np.random.default_rng(0).bytes(4096))
    return first, second, hu


def test_dicom_folder_lists_series(abdomen_crop, tmp_path):
    first, second, _ = two_series_folder(tmp_path / "study", abdomen_crop)
    with pytest.raises(InputError) as error:
        read_ct(tmp_path / "study")
    message = str(error.value)
    assert "2 DICOM series" in message
    assert first in message
    assert second in message
    assert "'soft tissue'" in message
    assert "8 files" in message
    assert "--series UID" in message


def test_dicom_series_option_reads_one_series(abdomen_crop, tmp_path):
    first, second, hu = two_series_folder(tmp_path / "study", abdomen_crop)
    for uid, expected, thickness in ((first, hu, 2.5), (second, hu + 100, 1.25)):
        image = read_ct(tmp_path / "study", series_uid=uid)
        # Only the chosen series' slices: count, values and slice spacing all match it.
        assert image.GetSize() == (64, 64, 8)
        assert np.array_equal(sitk.GetArrayFromImage(image), expected.astype(np.float32))
        assert image.GetSpacing()[2] == pytest.approx(thickness)

    with pytest.raises(InputError, match="not found") as error:
        read_ct(tmp_path / "study", series_uid="1.2.3.4")
    assert first in str(error.value)


def test_mixed_stacks_in_one_series_rejected(abdomen_crop, tmp_path):
    uid = new_uid()
    hu = small_hu(abdomen_crop)
    write_dicom_series(tmp_path / "sizes", hu, series_uid=uid, file_prefix="a")
    write_dicom_series(tmp_path / "sizes", hu[:2, :32, :48], series_uid=uid, file_prefix="localizer",
                       origin=(-100.0, -120.0, 80.0))
    with pytest.raises(InputError, match="different sizes") as error:
        read_ct(tmp_path / "sizes")
    assert "64x64" in str(error.value)
    assert "48x32" in str(error.value)

    write_dicom_series(tmp_path / "repeated", hu, series_uid=uid, file_prefix="a")
    write_dicom_series(tmp_path / "repeated", hu + 50, series_uid=uid, file_prefix="b")
    with pytest.raises(InputError, match="8 slices at a position"):
        read_ct(tmp_path / "repeated")


def test_dicom_slope_varies_by_slice(abdomen_crop, tmp_path):
    hu = small_hu(abdomen_crop, depth=6)
    hu = np.round(hu / 2) * 2  # even values, so a slope of 2 stores them exactly
    slopes = [1.0, 2.0, 0.5, 1.0, 2.0, 1.0]
    intercepts = [-1024.0, -2048.0, -1024.0, -1000.0, 0.0, -1024.0]
    write_dicom_series(tmp_path / "slopes", hu, slopes=slopes, intercepts=intercepts, unsigned=False)

    values = sitk.GetArrayFromImage(read_ct(tmp_path / "slopes"))
    for k in range(len(slopes)):
        assert np.array_equal(values[k], hu[k].astype(np.float32)), f"slice {k} with slope {slopes[k]}"


def test_unicode_and_space_paths(abdomen_crop, screening_model, tmp_path):
    source = tmp_path / "Patiënt Ω 1" / "ct scan ü.nii.gz"
    source.parent.mkdir()
    sitk.WriteImage(abdomen_crop, str(source))
    dicom_folder = tmp_path / "DICOM ß 2"
    write_dicom_series(dicom_folder, small_hu(abdomen_crop), file_prefix="schicht ä ")
    model_folder = tmp_path / "modèle 3"
    shutil.copytree(screening_model.folder, model_folder)

    for name, source_path in (("file", source), ("dicom", dicom_folder)):
        output = tmp_path / "résultats ñ" / f"carte {name} ø.nii.gz"
        findings = tmp_path / "résultats ñ" / f"befunde {name} ü.csv"
        preview = tmp_path / "résultats ñ" / f"vorschau {name} é.png"
        code = main(["predict", str(source_path), "-o", str(output), "--model", str(model_folder), "--device", "cpu",
                     "--progress", "none", "--findings", str(findings), "--preview", str(preview)])
        assert code == 0, name
        assert findings.is_file(), name
        assert preview.is_file(), name
        assert same_geometry(sitk.ReadImage(str(output)), read_ct(source_path), tolerance=1e-4), name
