"""Input values: non-HU scales, NaN and Inf voxels, scanner padding, and pixel types with rescale."""

from __future__ import annotations

import logging
import struct

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from ScreenerCore.cli import main
from ScreenerCore.errors import InputError
from ScreenerCore.findings import find_findings
from ScreenerCore.io import read_ct
from ScreenerCore.pipeline import compute_anomaly_map

from ct_inputs import abdomen_crop, screening_model, write_dicom_series  # noqa: F401  (pytest fixtures)


def with_values(reference: sitk.Image, values: np.ndarray) -> sitk.Image:
    image = sitk.GetImageFromArray(values)
    image.CopyInformation(reference)
    return image


def map_array(image: sitk.Image, model, **options) -> np.ndarray:
    return sitk.GetArrayFromImage(compute_anomaly_map(image, model, device="cpu", **options).anomaly_map)


def non_hu_versions(hu: np.ndarray) -> dict[str, np.ndarray]:
    unit = (np.clip(hu, -1000, 1000) + 1000) / 2000
    return {
        "unit": unit.astype(np.float32),  # [0, 1]
        "byte": np.round(unit * 255).astype(np.float32),  # [0, 255]
        "stored": (np.maximum(hu, -1024) + 1024).astype(np.float32),  # raw unsigned values, intercept not applied
        "normalised": ((hu - hu.mean()) / hu.std()).astype(np.float32),  # z-scores
    }


@pytest.mark.parametrize("kind", ["unit", "byte", "stored", "normalised"])
def test_non_hu_rejected_with_reason(kind, abdomen_crop, screening_model, tmp_path):
    hu = sitk.GetArrayFromImage(abdomen_crop)
    path = tmp_path / f"{kind}.nrrd"
    sitk.WriteImage(with_values(abdomen_crop, non_hu_versions(hu)[kind]), str(path))

    with pytest.raises(InputError) as error:
        compute_anomaly_map(read_ct(path), screening_model, device="cpu", name=str(path))
    message = str(error.value)
    assert str(path) in message
    assert "Hounsfield" in message
    assert "--allow-non-hu" in message


@pytest.mark.parametrize("kind", ["unit", "byte"])
def test_non_hu_runs_with_override(kind, abdomen_crop, screening_model, caplog):
    values = non_hu_versions(sitk.GetArrayFromImage(abdomen_crop))[kind]
    with caplog.at_level(logging.WARNING, logger="ScreenerCore"):
        scores = map_array(with_values(abdomen_crop, values), screening_model, allow_non_hu=True, name="scaled.nrrd")
    assert np.all(np.isfinite(scores))
    reasons = [r.getMessage() for r in caplog.records if "non-HU input was allowed" in r.getMessage()]
    assert len(reasons) == 1
    assert "scaled.nrrd" in reasons[0]
    assert "nothing below 0 HU" in reasons[0]


def test_cli_rejects_non_hu_input(abdomen_crop, screening_model, tmp_path, capsys):
    path = tmp_path / "byte.nii.gz"
    sitk.WriteImage(with_values(abdomen_crop, non_hu_versions(sitk.GetArrayFromImage(abdomen_crop))["byte"]), str(path))
    output = tmp_path / "map.nii.gz"

    code = main(["predict", str(path), "-o", str(output), "--model", str(screening_model.folder), "--device", "cpu",
                 "--progress", "none"])
    assert code == 2
    assert not output.exists()
    error = capsys.readouterr().err
    assert str(path) in error
    assert "--allow-non-hu" in error

    code = main(["predict", str(path), "-o", str(output), "--model", str(screening_model.folder), "--device", "cpu",
                 "--progress", "none", "--allow-non-hu", "--threshold-score", "1e9"])
    assert code == 0
    assert output.is_file()


def test_nan_and_inf_replaced_before_inference(abdomen_crop, screening_model, caplog):
    clean = sitk.GetArrayFromImage(abdomen_crop)
    dirty = clean.copy()
    dirty[20:23, 30:33, 30:33] = np.nan  # inside the body
    dirty[0, 0, :5] = np.inf  # in the air at a corner
    dirty[-1, -1, -3:] = -np.inf
    image = with_values(abdomen_crop, dirty)

    with caplog.at_level(logging.WARNING, logger="ScreenerCore"):
        dirty_map = map_array(image, screening_model, name="dirty.nii")
    clean_map = map_array(abdomen_crop, screening_model)

    assert np.all(np.isfinite(dirty_map))
    assert any("35 NaN or infinite voxels" in r.getMessage() and "dirty.nii" in r.getMessage()
               for r in caplog.records)
    # The input is not modified: its NaN voxels are still there.
    assert np.isnan(sitk.GetArrayViewFromImage(image)).sum() == 27

    # The nets see about 37 mm around a voxel (measured on this model: the farthest changed
    # voxel lies 36.6 mm from a NaN); beyond 64 mm the maps are equal.
    distance_mm = ndimage.distance_transform_edt(np.isfinite(dirty), sampling=abdomen_crop.GetSpacing()[::-1])
    far = distance_mm > 64.0
    assert far.sum() > 0.5 * far.size
    np.testing.assert_allclose(dirty_map[far], clean_map[far], rtol=0, atol=1e-5)


def field_of_view_padding(image: sitk.Image, radius_mm: float, padding_hu: float) -> sitk.Image:
    """Return `image` with every voxel outside an axial circle of `radius_mm` set to `padding_hu`."""
    values = sitk.GetArrayFromImage(image)
    depth, rows, columns = values.shape
    spacing = image.GetSpacing()
    y, x = np.mgrid[:rows, :columns]
    outside = np.hypot((x - (columns - 1) / 2) * spacing[0], (y - (rows - 1) / 2) * spacing[1]) > radius_mm
    values[:, outside] = padding_hu
    return with_values(image, values)


def test_padding_treated_as_outside_body(abdomen_crop, screening_model):
    # A circle of 80 mm radius cuts through the body in this 192 mm crop, as a small
    # field of view does on a large patient.
    air = compute_anomaly_map(field_of_view_padding(abdomen_crop, 80.0, -1024.0), screening_model, device="cpu")
    air_map = sitk.GetArrayFromImage(air.anomaly_map)
    outside = sitk.GetArrayFromImage(field_of_view_padding(abdomen_crop, 80.0, -5000.0)) == -5000.0
    assert np.any(sitk.GetArrayFromImage(abdomen_crop)[outside] > -500), "the circle should cut the body"
    outside_far = sitk.GetArrayFromImage(field_of_view_padding(abdomen_crop, 88.0, -5000.0)) == -5000.0

    for padding_hu in (-2048.0, -3024.0):
        padded = compute_anomaly_map(field_of_view_padding(abdomen_crop, 80.0, padding_hu), screening_model,
                                     device="cpu")
        padded_map = sitk.GetArrayFromImage(padded.anomaly_map)
        # Padding is air to the model, so the map is the one of the scan filled with air.
        np.testing.assert_allclose(padded_map, air_map, rtol=0, atol=1e-6)
        # Linear resampling from the 4 mm model grid blurs the map edge by up to one model voxel
        # (6.9 mm along its diagonal); padding farther from the field of view gets the floor.
        assert np.all(padded_map[outside_far] == np.float32(padded.floor))

        # No finding reaches into the padding, even at a threshold that 5 % of in-body voxels exceed.
        threshold = float(np.percentile(padded_map[padded_map > padded.floor], 95))
        for finding in find_findings(padded.anomaly_map, threshold):
            i, j, k = finding.peak_index
            assert not outside[k, j, i]


def write_nifti_with_rescale(path, reference: sitk.Image, stored: np.ndarray, slope: float, intercept: float):
    """Write `stored` as an uncompressed NIfTI-1 file and set its scl_slope and scl_inter header fields."""
    sitk.WriteImage(with_values(reference, stored), str(path))
    with open(path, "r+b") as handle:
        handle.seek(112)  # scl_slope and scl_inter: two float32 at bytes 112-119 of the NIfTI-1 header
        handle.write(struct.pack("<ff", slope, intercept))


def test_pixel_types_give_same_map(abdomen_crop, screening_model, tmp_path):
    # Even HU values from -1024 to 3070, so every encoding below stores them exactly.
    hu = (np.round(np.clip(sitk.GetArrayFromImage(abdomen_crop), -1024, 3070) / 2) * 2).astype(np.float64)
    reference = with_values(abdomen_crop, hu.astype(np.float32))
    axial = sitk.Image(reference)
    axial.SetDirection((1, 0, 0, 0, 1, 0, 0, 0, 1))
    files = {}

    for name, dtype in (("int16.nii.gz", np.int16), ("int32.nrrd", np.int32), ("float32.mha", np.float32),
                        ("float64.nrrd", np.float64)):
        sitk.WriteImage(with_values(axial, hu.astype(dtype)), str(tmp_path / name))
        files[name] = tmp_path / name
    write_nifti_with_rescale(tmp_path / "uint16_intercept.nii", axial, (hu + 1024).astype(np.uint16), 1.0, -1024.0)
    write_nifti_with_rescale(tmp_path / "int16_slope2.nii", axial, ((hu + 1000) / 2).astype(np.int16), 2.0, -1000.0)
    files["uint16_intercept.nii"] = tmp_path / "uint16_intercept.nii"
    files["int16_slope2.nii"] = tmp_path / "int16_slope2.nii"
    origin, spacing = axial.GetOrigin(), axial.GetSpacing()
    write_dicom_series(tmp_path / "dicom_uint16", hu, spacing, origin, unsigned=True)
    write_dicom_series(tmp_path / "dicom_int16_slope", hu, spacing, origin, unsigned=False,
                       slopes=[2.0] * hu.shape[0], intercepts=[0.0] * hu.shape[0])
    files["dicom_uint16"] = tmp_path / "dicom_uint16"
    files["dicom_int16_slope"] = tmp_path / "dicom_int16_slope"

    expected = map_array(axial, screening_model)
    for name, path in files.items():
        image = read_ct(path)
        assert image.GetPixelID() == sitk.sitkFloat32, name
        assert np.array_equal(sitk.GetArrayFromImage(image), hu.astype(np.float32)), name
        assert np.allclose(image.GetOrigin(), origin, atol=1e-4), name
        np.testing.assert_allclose(map_array(image, screening_model), expected, rtol=0, atol=1e-6, err_msg=name)
