"""Reading real CT (DICOM series and files) and getting the map back on the exact input grid."""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from ScreenerCore import compute_anomaly_map, load_model_package, read_ct, write_image
from ScreenerCore.io import same_geometry


def test_dicom_series_reads_in_hu(shared_ct):
    image = read_ct(shared_ct("dicom/upper_abdomen_totalseg"))
    values = sitk.GetArrayViewFromImage(image)
    assert image.GetSize() == (512, 512, 20)
    assert np.allclose(image.GetSpacing()[:2], 0.98, atol=0.01)
    # Air outside the patient and soft tissue inside: values are HU, not raw stored values.
    assert values.min() <= -900
    assert -100 < np.median(values[values > -500]) < 200


def test_dicom_map_keeps_input_geometry(shared_ct, tiny_model_folder, tmp_path):
    image = read_ct(shared_ct("dicom/upper_abdomen_totalseg"))
    result = compute_anomaly_map(image, load_model_package(tiny_model_folder))
    written = write_image(result.anomaly_map, tmp_path / "map.nrrd")
    reread = sitk.ReadImage(str(written))
    assert same_geometry(reread, image)
    assert np.all(np.isfinite(sitk.GetArrayViewFromImage(reread)))


def test_non_identity_direction_keeps_geometry(shared_ct, tiny_model_folder, tmp_path):
    image = read_ct(shared_ct("train/abdomen_pelvis_totalseg.nii.gz"))
    # Rotate the direction 30 degrees about z and flip y, keeping the voxel data.
    angle = np.deg2rad(30)
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    direction = rotation @ np.diag([1.0, -1.0, 1.0])
    oblique = sitk.Image(image)
    oblique.SetDirection(direction.ravel().tolist())
    oblique.SetOrigin((12.5, -40.0, 7.25))

    result = compute_anomaly_map(oblique, load_model_package(tiny_model_folder))
    path = write_image(result.anomaly_map, tmp_path / "map.nii.gz")
    reread = sitk.ReadImage(str(path))
    assert reread.GetSize() == oblique.GetSize()
    assert np.allclose(reread.GetOrigin(), oblique.GetOrigin(), atol=1e-4)
    assert np.allclose(reread.GetSpacing(), oblique.GetSpacing(), atol=1e-5)
    assert np.allclose(reread.GetDirection(), oblique.GetDirection(), atol=1e-5)


def test_input_image_not_modified(shared_ct, tiny_model_folder):
    image = read_ct(shared_ct("train/abdomen_pelvis_totalseg.nii.gz"))
    before = sitk.GetArrayFromImage(image).copy()
    compute_anomaly_map(image, load_model_package(tiny_model_folder))
    assert np.array_equal(sitk.GetArrayViewFromImage(image), before)
